"""The report of `normnet predict`: which slices its picture shows."""
import numpy as np

from lightning_normnet.report import most_affected_levels


def test_most_affected_levels_by_hand():
    """20 slices (a tenth: 2 apart at least): the peaks 9 (30), 10 (29, too close to 9), 3 (20), 15 (10)."""
    per_slice = np.zeros(20, int)
    per_slice[[3, 9, 10, 15, 16]] = [20, 30, 29, 10, 5]
    lung = np.ones(20, int)
    assert most_affected_levels(per_slice, lung) == [3, 9, 15]
    assert most_affected_levels(per_slice, lung, count=1) == [9]


def test_without_lesion_the_levels_spread_over_the_lung():
    lung = np.zeros(20, int)
    lung[4:16] = 1                                  # lung slices 4..15: quarter points 6.75, 9.5, 12.25 of 4..15
    assert most_affected_levels(np.zeros(20, int), lung) == [7, 10, 12]
