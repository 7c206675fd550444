"""k-fold assignment of labelled items (volumes, or 2D slices), for cross-validation (`normnet cv`, the
`cv` config group).

Folds are deterministic from the seed: the items, sorted by (dataset, name), are shuffled by a seeded
permutation and dealt round-robin into k folds (sizes differ by at most one).
"""
from __future__ import annotations

import numpy as np


def fold_assignment(items: list[tuple[str, str]], k: int, seed: int) -> dict[tuple[str, str], int]:
    if not 2 <= k <= len(items):
        raise ValueError(f"{k}-fold cross-validation needs 2 <= k <= the {len(items)} labelled items.")
    ordered = sorted(items)
    permutation = np.random.default_rng(seed).permutation(len(ordered))
    return {ordered[i]: position % k for position, i in enumerate(permutation)}


def held_out(items: list[tuple[str, str]], cv, seed: int) -> set[tuple[str, str]]:
    """The items of fold `cv.fold` of `cv.folds` (none when cv.fold is null: no cross-validation)."""
    if cv.fold is None:
        return set()
    return {item for item, fold in fold_assignment(items, cv.folds, seed).items() if fold == cv.fold}
