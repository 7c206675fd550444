"""The bookkeeping of Semi-Inf-Net's Algorithm 1: which unlabelled slices are still unlabelled, which
carry a pseudo-label, and which round comes next, kept in a JSON file written after every round so that
an interrupted run resumes at the round it stopped in (the same K slices are drawn again: the draw is
seeded by the run's seed and the round number).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .io import write_text


def soft_pseudo_label(probability: np.ndarray) -> np.ndarray:
    """A pseudo-label as the authors' PseudoGenerator.py keeps it: the probability map rescaled to its own
    [min, max], as 8-bit grey levels (not binarised)."""
    low, high = float(probability.min()), float(probability.max())
    return np.round(255 * (probability - low) / (high - low + 1e-8)).astype(np.uint8)


@dataclass
class PseudoLabelPool:
    remaining: list[str]                              # unlabelled slices not yet pseudo-labelled
    labelled: list[str] = field(default_factory=list)  # slices with a pseudo-label, in the order they got it
    round: int = 0
    seed: int = 0

    @classmethod
    def load_or_start(cls, state: Path, unlabelled: list[str], seed: int) -> "PseudoLabelPool":
        if state.is_file():
            return cls(**json.loads(state.read_text()))
        return cls(remaining=sorted(unlabelled), seed=seed)

    @property
    def done(self) -> bool:
        return not self.remaining

    def draw(self, k: int) -> list[str]:
        """The K slices of this round: a random draw without replacement from those remaining."""
        rng = np.random.default_rng([self.seed, self.round])
        picks = rng.choice(len(self.remaining), size=min(k, len(self.remaining)), replace=False)
        return [self.remaining[i] for i in sorted(picks)]

    def add(self, drawn: list[str], state: Path) -> None:
        """D_training += the drawn slices; D_unlabelled -= them; the round is over (saved atomically)."""
        self.labelled += drawn
        self.remaining = [s for s in self.remaining if s not in set(drawn)]
        self.round += 1
        write_text(state, json.dumps(asdict(self), indent=1))
