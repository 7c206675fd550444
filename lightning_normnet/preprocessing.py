"""NormNet pre-processing (Sec. III-A/B, IV-B.2): from a CT in HU to H and M on the model grid.

Order, as in the paper: reorient, resample to 0.8 x 0.8 x 1 mm, window [-800, 100]
HU to [0, 1] (R'), H' = R' * M', remove erroneous edges (training only), H = H' * M,
then centre the lungs and crop/pad in-plane with 0. Slices without lung are
dropped along z. The crop is itself a grid (`PreparedVolume.grid`), and
`to_original_grid` brings any array on it back onto the scan's own grid: every
method's prediction is scored, and written, there.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from omegaconf import DictConfig
from scipy import ndimage

from .io import Grid


@dataclass
class PreparedVolume:
    image: np.ndarray          # H: windowed [0, 1], zero outside the lung (mask_outside_lung), (z, y, x) float32
    lung: np.ndarray           # M: bool
    lesion: np.ndarray | None  # ground truth on the same grid, when given
    grid: Grid                 # where these arrays lie: the reoriented, resampled, cropped model grid


def to_original_grid(array: np.ndarray, model: Grid, original: Grid, linear: bool = False) -> np.ndarray:
    """A (z, y, x) array on the model grid sampled at the voxels of the original grid: nearest neighbour
    (masks, votes) or linear (probabilities); 0 where the model grid does not reach."""
    source = model.image(np.ascontiguousarray(array, dtype=np.float32 if linear else np.uint8))
    resampled = sitk.Resample(source, [int(s) for s in original.size], sitk.Transform(),
                              sitk.sitkLinear if linear else sitk.sitkNearestNeighbor, original.origin,
                              original.spacing, original.direction, 0, source.GetPixelID())
    out = sitk.GetArrayFromImage(resampled)
    return out if linear else out.astype(bool)


def reorient(image: sitk.Image, orientation: str) -> sitk.Image:
    return sitk.DICOMOrient(image, orientation)


def resample(image: sitk.Image, spacing_xyz, is_mask: bool) -> sitk.Image:
    """Resample to a new spacing over the same physical extent; images are smoothed before downsampling."""
    old_spacing = np.array(image.GetSpacing())
    new_spacing = np.array(spacing_xyz, dtype=float)
    size = np.maximum(1, np.round(np.array(image.GetSize()) * old_spacing / new_spacing)).astype(int)
    if not is_mask:
        factor = new_spacing / old_spacing
        if (factor > 1.5).any():
            sigma = [float(0.4 * n) if f > 1.5 else 0.01 for n, f in zip(new_spacing, factor)]
            image = sitk.SmoothingRecursiveGaussian(image, sigma)
    return sitk.Resample(image, [int(s) for s in size], sitk.Transform(),
                         sitk.sitkNearestNeighbor if is_mask else sitk.sitkLinear,
                         image.GetOrigin(), [float(s) for s in new_spacing], image.GetDirection(),
                         0 if is_mask else -1024.0, image.GetPixelID())


def window(hu: np.ndarray, low: float, high: float) -> np.ndarray:
    """Clip to [low, high] HU and scale to [0, 1] (R')."""
    return ((np.clip(hu, low, high) - low) / (high - low)).astype(np.float32)


def remove_erroneous_edges(thorax: np.ndarray, lung: np.ndarray, threshold: float, boundary_width: int,
                           min_fraction: float) -> np.ndarray:
    """M = M' minus bright connected areas of H' lying mostly on the boundary of M' (Sec. III-B)."""
    bright = (thorax >= threshold) & lung
    labels, count = ndimage.label(bright, structure=np.ones((3, 3, 3), bool))
    if count == 0:
        return lung.copy()
    inner = ndimage.binary_erosion(lung, iterations=boundary_width, border_value=0)
    boundary = lung & ~inner
    total = np.bincount(labels.ravel(), minlength=count + 1)
    on_edge = np.bincount(labels.ravel(), weights=boundary.ravel(), minlength=count + 1)
    edges = on_edge > min_fraction * np.maximum(total, 1)
    edges[0] = False
    return lung & ~edges[labels]


def crop_or_pad(array: np.ndarray, start, size) -> np.ndarray:
    """array[start:start+size] per axis, with zeros where the window leaves the array."""
    out = np.zeros(tuple(size), dtype=array.dtype)
    src, dst = [], []
    for s, n, length in zip(start, size, array.shape):
        lo, hi = max(s, 0), min(s + n, length)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    out[tuple(dst)] = array[tuple(src)]
    return out


def lung_centred_window(lung: np.ndarray, in_plane_size) -> tuple[int, int, int]:
    """Start (z, y, x) of the crop: z from the first lung slice, y/x centring the lung bounding box."""
    zs = np.flatnonzero(lung.any(axis=(1, 2)))
    ys = np.flatnonzero(lung.any(axis=(0, 2)))
    xs = np.flatnonzero(lung.any(axis=(0, 1)))
    cy, cx = (ys[0] + ys[-1] + 1) // 2, (xs[0] + xs[-1] + 1) // 2
    return int(zs[0]), int(cy - in_plane_size[0] // 2), int(cx - in_plane_size[1] // 2)


def prepare_volume(image: sitk.Image, lung: sitk.Image, cfg: DictConfig, lesion: sitk.Image | None = None,
                   training: bool = False) -> PreparedVolume:
    """H, M (and the lesion mask) on the model grid for one CT in HU with its lung mask M'."""
    image = resample(reorient(image, cfg.orientation), cfg.spacing, is_mask=False)
    lung_array = sitk.GetArrayFromImage(resample(reorient(lung, cfg.orientation), cfg.spacing, True)) > 0
    lesion_array = None
    if lesion is not None:
        lesion_array = sitk.GetArrayFromImage(resample(reorient(lesion, cfg.orientation), cfg.spacing, True)) > 0
    windowed = window(sitk.GetArrayViewFromImage(image), *cfg.window)
    thorax = windowed * lung_array
    if cfg.edge_removal.enabled and (training or cfg.edge_removal.at_inference):
        lung_array = remove_erroneous_edges(thorax, lung_array, cfg.edge_removal.threshold,
                                            cfg.edge_removal.boundary_width, cfg.edge_removal.min_fraction)
        thorax = thorax * lung_array
    if not cfg.mask_outside_lung:      # methods that see the whole thorax (the supervised U-Net)
        thorax = windowed
    start = lung_centred_window(lung_array, cfg.in_plane_size)
    depth = int(np.flatnonzero(lung_array.any(axis=(1, 2)))[-1]) + 1 - start[0]
    size = (depth, *cfg.in_plane_size)
    return PreparedVolume(
        image=crop_or_pad(thorax.astype(np.float32), start, size),
        lung=crop_or_pad(lung_array, start, size),
        lesion=None if lesion_array is None else crop_or_pad(lesion_array, start, size),
        grid=_crop_grid(image, start, size))


def _crop_grid(image: sitk.Image, start_zyx, size_zyx) -> Grid:
    """The grid of image[start:start + size] (start may be negative: padding)."""
    spacing = np.array(image.GetSpacing())
    direction = np.array(image.GetDirection()).reshape(3, 3)
    origin = np.array(image.GetOrigin()) + direction @ (spacing * np.array(start_zyx[::-1], dtype=float))
    return Grid(tuple(int(s) for s in size_zyx[::-1]), tuple(float(s) for s in spacing),
                tuple(float(o) for o in origin), tuple(float(d) for d in direction.ravel()))
