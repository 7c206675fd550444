"""The naive line every learned method must beat: lesion = lung voxels in a HU band, opened.

Ground-glass opacities lie between air-filled parenchyma and soft tissue, so the band
low < HU < high (default -700 < HU < -200) inside the lung mask, followed by a small morphological
opening (a ball of `threshold.opening_radius` voxels) that removes isolated voxels, is the simplest
lesion detector there is. Nothing is learned: "training" only scores it on data.test and writes a
checkpoint that evaluate, predict and compare treat like any other method's.
"""
from __future__ import annotations

import torch

from ..inference import VolumePrediction
from ..postprocessing import opening
from .base import SegmentationModule


def hu_to_window(hu: float, window) -> float:
    """Where a HU value lies in H, the prepared image scaled from the window [low, high] HU to [0, 1]."""
    low, high = window
    return (hu - low) / (high - low)


class ThresholdModel(SegmentationModule):
    def predict_volume(self, image: torch.Tensor, lung: torch.Tensor) -> VolumePrediction:
        low, high = (hu_to_window(hu, self.cfg.preprocessing.window) for hu in self.cfg.threshold.hu_band)
        band = lung.bool() & (image > low) & (image < high)
        return VolumePrediction(opening(band, self.cfg.threshold.opening_radius) & lung.bool())
