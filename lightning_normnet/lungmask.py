"""Lung masks M': the offline `threshold` backend and masks supplied as files.

The paper used an nnU-Net whose weights cannot be fetched here, so the default
is a classical pipeline: air below a HU threshold, minus the air connected to
the in-plane border of the scan (outside the body), the largest one or two
components (the lungs), a morphological closing so vessels and dense lesions at
the pleura stay inside, and holes filled slice by slice. The trachea and the
large bronchi are then cut out with a margin (`remove_large_airways`): they are
air connected to the lungs, so the threshold keeps them, but they are not lung,
and the paper's lung masks (an nnU-Net) leave them out.
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
    pad, box = _box_around(mask, spacing_zyx, radius_mm)
    crop = np.pad(mask[box], [(p, p) for p in pad])
    dilated = ndimage.distance_transform_edt(~crop, sampling=spacing_zyx) <= radius_mm
    closed = ndimage.distance_transform_edt(dilated, sampling=spacing_zyx) > radius_mm
    out = mask.copy()
    inner = tuple(slice(p, p + (b.stop - b.start) if b.stop <= s else p + s - b.start)
                  for p, b, s in zip(pad, box, mask.shape))
    out[box] |= closed[inner]
    return out


def _box_around(mask: np.ndarray, spacing_zyx, radius_mm: float) -> tuple[list[int], tuple[slice, ...]]:
    """The voxels a ball of `radius_mm` can reach per axis (plus one), and the mask's bounding box widened by
    them, cut at the array's border: where a distance transform of that radius needs to run."""
    pad = [int(np.ceil(radius_mm / s)) + 1 for s in spacing_zyx]
    return pad, tuple(slice(max(0, lo - p), hi + p) for (lo, hi), p in zip(_bbox(mask), pad))


def _bbox(mask: np.ndarray) -> list[tuple[int, int]]:
    out = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        nonzero = np.flatnonzero(mask.any(axis=other))
        out.append((int(nonzero[0]), int(nonzero[-1]) + 1))
    return out


AIRWAY_LUMEN_HU = (-900.0, -930.0, -960.0, -990.0)   # tried in turn until the grown airway stays small
AIRWAY_MAX_ML = 150.0        # trachea and main bronchi of an adult: about 30-60 mL; more is a leak into the lung
TRACHEA_MAX_AREA_MM2 = 800.0  # the trachea's cross-section (about 2 cm across) and some closing around it
TRACHEA_MIN_LENGTH_MM = 15.0  # the air tube above the lungs must be this long to be taken for the trachea
TRACHEA_AREA_RATIO = 2.0      # and its cross-section may vary by this factor along that length


def trachea_slices(lungs: np.ndarray, spacing_zyx, superior_last: bool) -> list[int]:
    """The slices at the mask's superior end that hold the trachea alone: one small component of
    nearly constant area (a tube, where an apex widens fast), read downwards until the lungs begin.
    [] where the scan shows no such tube (cut below the larynx, a phantom without trachea, an apex at
    the top)."""
    zs = np.flatnonzero(lungs.any(axis=(1, 2)))
    pixel_mm2 = spacing_zyx[1] * spacing_zyx[2]
    found, areas = [], []
    for z in zs[::-1] if superior_last else zs:
        area = lungs[z].sum() * pixel_mm2
        if (ndimage.label(lungs[z])[1] != 1 or area > TRACHEA_MAX_AREA_MM2
                or (areas and max(areas + [area]) > TRACHEA_AREA_RATIO * min(areas + [area]))):
            break
        found.append(int(z))
        areas.append(area)
    return found if len(found) * spacing_zyx[0] >= TRACHEA_MIN_LENGTH_MM else []


def remove_large_airways(lungs: np.ndarray, hu: np.ndarray, spacing_zyx, superior_last: bool,
                         margin_mm: float) -> np.ndarray:
    """The lung mask without the trachea and the bronchi that the trachea's lumen reaches, widened by
    `margin_mm` to take their walls: the air below the first of AIRWAY_LUMEN_HU connected to the trachea
    (a stricter threshold where that leaks into the lung). Unchanged where no trachea is found or every
    threshold leaks."""
    seeds = trachea_slices(lungs, spacing_zyx, superior_last)
    if not seeds:
        return lungs
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    for lumen_hu in AIRWAY_LUMEN_HU:
        labels, _ = ndimage.label((hu < lumen_hu) & lungs)
        ids = np.unique(labels[seeds])
        airway = np.isin(labels, ids[ids > 0])
        if airway.any() and airway.sum() * voxel_ml <= AIRWAY_MAX_ML:
            return lungs & ~_widen(airway, spacing_zyx, margin_mm)
    return lungs


def _widen(mask: np.ndarray, spacing_zyx, radius_mm: float) -> np.ndarray:
    """The voxels within `radius_mm` of the mask (a Euclidean ball in mm), computed on its bounding box."""
    _, box = _box_around(mask, spacing_zyx, radius_mm)
    out = np.zeros_like(mask)
    out[box] = ndimage.distance_transform_edt(~mask[box], sampling=spacing_zyx) <= radius_mm
    return out


def superior_is_last(image: sitk.Image) -> bool | None:
    """Whether the array's last slice is the most superior (LPS z grows towards the head); None where the
    slices are not axial (a coronal or sagittal stack), which has no top slice to find the trachea in."""
    cosine = image.GetDirection()[8]
    return None if abs(cosine) < 0.5 else cosine > 0


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
        hu = sitk.GetArrayViewFromImage(image)
        array = threshold_lung_mask(hu, spacing_zyx, cfg.threshold_hu, cfg.closing_radius_mm,
                                    cfg.min_second_fraction)
        superior_last = superior_is_last(image)
        if cfg.airway_margin_mm is not None and superior_last is not None:
            array = remove_large_airways(array, hu, spacing_zyx, superior_last, cfg.airway_margin_mm)
        mask = sitk.GetImageFromArray(array.astype(np.uint8))
        mask.CopyInformation(image)
    if not sitk.GetArrayViewFromImage(mask).any():
        raise InputError(f"{source}: the lung mask is empty.")
    return mask
