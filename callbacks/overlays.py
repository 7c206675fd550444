"""Overlay pictures of a prediction against the truth, coloured as in the paper's figures.

TP green, FN blue, FP red over the grey image, on the axial slice where the
truth (or, without truth, the prediction) has the most voxels.
"""
from __future__ import annotations

import numpy as np

COLOURS = {"tp": (0, 200, 0), "fn": (0, 80, 255), "fp": (230, 0, 0)}


def overlay(image: np.ndarray, pred: np.ndarray, truth: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """RGB uint8 picture of a 2D slice: image in [0, 1], pred and truth boolean."""
    grey = (np.clip(image, 0, 1) * 255).astype(np.float32)
    rgb = np.stack([grey] * 3, axis=-1)
    for key, mask in (("tp", pred & truth), ("fn", ~pred & truth), ("fp", pred & ~truth)):
        rgb[mask] = (1 - alpha) * rgb[mask] + alpha * np.array(COLOURS[key], np.float32)
    return rgb.astype(np.uint8)


def overlay_slice(image: np.ndarray, pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Overlay of the most telling axial slice (the first array axis) of (D, H, W) volumes."""
    pred, truth = pred.astype(bool), truth.astype(bool)
    area = truth.sum(axis=(1, 2)) if truth.any() else pred.sum(axis=(1, 2))
    z = int(area.argmax())
    return overlay(image[z], pred[z], truth[z])
