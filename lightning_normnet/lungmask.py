"""Lung masks M': the offline `threshold` backend and masks supplied as files.

The paper used an nnU-Net whose weights cannot be fetched here, so the default
is a classical pipeline: air below a HU threshold, minus the air connected to
the in-plane border of the scan (outside the body), the largest one or two
components (the lungs), a morphological closing so vessels and dense lesions at
the pleura stay inside, and holes filled slice by slice.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from omegaconf import DictConfig
from scipy import ndimage

from .io import InputError


def threshold_lung_mask(hu: np.ndarray, spacing_zyx: tuple[float, float, float], threshold_hu: float = -320.0,
                        closing_radius_mm: float = 6.0, min_second_fraction: float = 0.1) -> np.ndarray:
    """Boolean lung mask of a (z, y, x) HU array."""
    air = hu < threshold_hu
    labels, count = ndimage.label(air)
    if count == 0:
        return np.zeros_like(air)
    border = np.unique(np.concatenate([labels[:, 0, :].ravel(), labels[:, -1, :].ravel(),
                                       labels[:, :, 0].ravel(), labels[:, :, -1].ravel()]))
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sizes[0] = 0
    sizes[border] = 0
    order = np.argsort(sizes)[::-1]
    keep = [order[0]] if sizes[order[0]] > 0 else []
    if len(order) > 1 and sizes[order[1]] > 0 and sizes[order[1]] >= min_second_fraction * sizes[order[0]]:
        keep.append(order[1])
    lungs = np.isin(labels, keep)
    if not lungs.any():
        return lungs
    lungs = _closing(lungs, spacing_zyx, closing_radius_mm)
    for z in range(lungs.shape[0]):
        lungs[z] = ndimage.binary_fill_holes(lungs[z])
    return lungs


def _closing(mask: np.ndarray, spacing_zyx, radius_mm: float) -> np.ndarray:
    """Closing with a Euclidean ball in mm via distance transforms (linear time, anisotropic)."""
    if radius_mm <= 0:
        return mask
    pad = [int(np.ceil(radius_mm / s)) + 1 for s in spacing_zyx]
    box = tuple(slice(max(0, lo - p), hi + p) for (lo, hi), p in zip(_bbox(mask), pad))
    crop = np.pad(mask[box], [(p, p) for p in pad])
    dilated = ndimage.distance_transform_edt(~crop, sampling=spacing_zyx) <= radius_mm
    closed = ndimage.distance_transform_edt(dilated, sampling=spacing_zyx) > radius_mm
    out = mask.copy()
    inner = tuple(slice(p, p + (b.stop - b.start) if b.stop <= s else p + s - b.start)
                  for p, b, s in zip(pad, box, mask.shape))
    out[box] |= closed[inner]
    return out


def _bbox(mask: np.ndarray) -> list[tuple[int, int]]:
    out = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        nonzero = np.flatnonzero(mask.any(axis=other))
        out.append((int(nonzero[0]), int(nonzero[-1]) + 1))
    return out


def lung_mask(image: sitk.Image, cfg: DictConfig, supplied: sitk.Image | None = None,
              source: str | Path = "") -> sitk.Image:
    """M' for a CT image (HU) on the image's grid: the supplied mask when there is one (read with
    io.read_mask), else the configured backend."""
    if supplied is not None:
        mask = supplied
    elif cfg.backend == "file":
        raise InputError(f"{source}: lung_mask.backend=file but no lung mask file was found for it.")
    else:
        spacing_zyx = tuple(reversed(image.GetSpacing()))
        array = threshold_lung_mask(sitk.GetArrayViewFromImage(image), spacing_zyx, cfg.threshold_hu,
                                    cfg.closing_radius_mm, cfg.min_second_fraction)
        mask = sitk.GetImageFromArray(array.astype(np.uint8))
        mask.CopyInformation(image)
    if not sitk.GetArrayViewFromImage(mask).any():
        raise InputError(f"{source}: the lung mask is empty.")
    return mask
