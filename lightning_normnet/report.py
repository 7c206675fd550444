"""What `normnet predict --report` writes beside the mask: the numbers (JSON) and a picture to check at
a glance (PNG): the axial slices at the most affected levels with the lesion mask outlined over the CT,
and the per-slice lesion curve. Slices are the first axis of the SimpleITK array, in file order.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .io import write_figure

DISPLAY_WINDOW = (-1350.0, 150.0)   # HU, a lung window (level -600, width 1500)


def infection_report(source, lesion: sitk.Image, lung: sitk.Image) -> dict:
    """Lung and lesion volume (mL), percentage of infection, lesion voxels per axial slice (array axis 0)."""
    voxel_ml = float(np.prod(lesion.GetSpacing())) / 1000.0
    lesion_array = sitk.GetArrayViewFromImage(lesion) > 0
    lung_array = sitk.GetArrayViewFromImage(lung) > 0
    lung_ml = float(lung_array.sum()) * voxel_ml
    lesion_ml = float(lesion_array.sum()) * voxel_ml
    return {"input": str(source), "spacing_mm": list(lesion.GetSpacing()), "lung_volume_ml": lung_ml,
            "lesion_volume_ml": lesion_ml,
            "percentage_of_infection": 100.0 * lesion_ml / lung_ml if lung_ml > 0 else 0.0,
            "lesion_voxels_per_slice": lesion_array.sum(axis=(1, 2)).astype(int).tolist()}


def most_affected_levels(per_slice: np.ndarray, lung_per_slice: np.ndarray, count: int = 3) -> list[int]:
    """Up to `count` slices with the most lesion, at least a tenth of the scan apart; without lesion, levels
    spread evenly over the lung."""
    if per_slice.max() == 0:
        lung_slices = np.flatnonzero(lung_per_slice) if lung_per_slice.any() else np.arange(len(per_slice))
        return sorted({int(lung_slices[round(i)]) for i in np.linspace(0, len(lung_slices) - 1, count + 2)[1:-1]})
    gap = max(1, len(per_slice) // 10)
    chosen: list[int] = []
    for z in np.argsort(-per_slice, kind="stable"):
        if per_slice[z] == 0 or len(chosen) == count:
            break
        if all(abs(int(z) - c) >= gap for c in chosen):
            chosen.append(int(z))
    return sorted(chosen)


def report_figure(image: sitk.Image, lesion: sitk.Image, lung: sitk.Image, path: str | Path, title: str) -> Path:
    """The PNG of the report: chosen axial slices (lesion outlined red, lung yellow) over the lesion curve."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hu = sitk.GetArrayViewFromImage(image)
    lesion_array = sitk.GetArrayViewFromImage(lesion) > 0
    lung_array = sitk.GetArrayViewFromImage(lung) > 0
    per_slice = lesion_array.sum(axis=(1, 2))
    levels = most_affected_levels(per_slice, lung_array.sum(axis=(1, 2)))
    spacing_x, spacing_y = image.GetSpacing()[:2]
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    figure = plt.figure(figsize=(4 * max(3, len(levels)), 6.5))
    grid = figure.add_gridspec(2, max(3, len(levels)), height_ratios=[3, 1.2])
    for column, z in enumerate(levels):
        axis = figure.add_subplot(grid[0, column])
        axis.imshow(hu[z], cmap="gray", vmin=DISPLAY_WINDOW[0], vmax=DISPLAY_WINDOW[1], aspect=spacing_y / spacing_x)
        for mask, colour in ((lung_array[z], "yellow"), (lesion_array[z], "red")):
            if mask.any() and not mask.all():
                axis.contour(mask, levels=[0.5], colors=colour, linewidths=0.8)
        axis.set_title(f"slice {z}: {per_slice[z] * voxel_ml:.1f} mL lesion", fontsize=9)
        axis.axis("off")
    curve = figure.add_subplot(grid[1, :])
    curve.plot(np.arange(len(per_slice)), per_slice * voxel_ml, color="red")
    for z in levels:
        curve.axvline(z, color="grey", linestyle="--", linewidth=0.8)
    curve.set_xlabel("slice (first array axis, file order)")
    curve.set_ylabel("lesion (mL)")
    curve.set_xlim(0, max(1, len(per_slice) - 1))
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    write_figure(figure, path, dpi=100)
    return Path(path)
