"""k-fold assignment of labelled volumes, for cross-validation (`normnet cv`, the `cv` config group).

Folds are deterministic from the seed: the volumes, sorted by (dataset, name), are shuffled by a seeded
permutation and dealt round-robin into k folds (sizes differ by at most one).
"""
from __future__ import annotations

import numpy as np


def fold_assignment(volumes: list[tuple[str, str]], k: int, seed: int) -> dict[tuple[str, str], int]:
    if not 2 <= k <= len(volumes):
        raise ValueError(f"{k}-fold cross-validation needs 2 <= k <= the {len(volumes)} labelled volumes.")
    ordered = sorted(volumes)
    permutation = np.random.default_rng(seed).permutation(len(ordered))
    return {ordered[i]: position % k for position, i in enumerate(permutation)}
