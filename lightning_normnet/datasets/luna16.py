"""LUNA16 as healthy training data, as the NormNet paper used it (Sec. IV-A.1).

    <root>/subset0/ ... subset9/<seriesuid>.mhd + .raw   (nested subsetN/subsetN/ too)
    <root>/annotations.csv          seriesuid, coordX, coordY, coordZ, diameter_mm (world mm)
    <root>/seg-lungs-LUNA16/<seriesuid>.mhd + .zraw   lung masks: 3 and 4 the lungs, 5 the trachea

Slices that hold a nodule (centre +/- radius along the slice axis, plus an
optional margin) are removed; what remains of a scan is cut into its runs of
consecutive nodule-free slices, each its own case `<seriesuid>_z<start>-<stop>`,
so no training slab ever spans the gap.
"""
from __future__ import annotations

import csv
import math
import re
from collections import defaultdict
from pathlib import Path

from ..io import Grid, InputError, Labels, case_name, read_header
from .cases import Case, Listing, by_name, image_files, require_root, subfolder

COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
SUBSET = re.compile(r"subset(\d+)$", re.IGNORECASE)


def discover(root: Path, options) -> Listing:
    root = require_root(root)
    scans = _scans(root, options.subsets)
    if not scans:
        raise InputError(f"{root}: no subset*/ folders with .mhd scans; is this the LUNA16 folder?")
    nodules = _annotations(root) if options.remove_nodule_slices else {}
    masks_folder = subfolder(root, ("seg-lungs-LUNA16",))
    masks = by_name(image_files(masks_folder)) if masks_folder else {}
    lung_labels = Labels(tuple(options.lung_labels), (3, 4, 5))
    listing = Listing()
    for scan in scans:
        uid = case_name(scan)
        header = read_header(scan)
        runs = nodule_free_runs(header, nodules.get(uid, []), options.nodule_margin_mm)
        if not runs:
            listing.skip(uid, f"{scan}: every slice lies within a nodule's extent.")
        for start, stop in runs:
            name = uid if (start, stop) == (0, header.size[2]) else f"{uid}_z{start:03d}-{stop:03d}"
            listing.cases.append(Case(name, scan, lung=masks.get(uid), lung_labels=lung_labels,
                                      slices=(start, stop)))
    return listing


def _scans(root: Path, subsets) -> list[Path]:
    wanted = None if subsets is None else {int(s) for s in subsets}
    scans = []
    for path in sorted(root.rglob("*.mhd")):
        numbers = [int(m.group(1)) for part in path.parent.relative_to(root).parts if (m := SUBSET.match(part))]
        if numbers and (wanted is None or numbers[0] in wanted):
            scans.append(path)
    return scans


def _annotations(root: Path) -> dict[str, list[tuple[float, float, float, float]]]:
    """{seriesuid: [(x, y, z, radius) in world mm]} from annotations.csv."""
    found = sorted(root.rglob("annotations.csv"), key=lambda p: len(p.parts))
    if not found:
        raise InputError(f"{root}: no annotations.csv, needed to remove the nodule slices "
                         "(datasets.luna16.remove_nodule_slices=false uses whole scans).")
    path = found[0]
    nodules = defaultdict(list)
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(f"{path}: lacks the column(s) {', '.join(missing)} of LUNA16's annotations.csv.")
        for line, row in enumerate(reader, start=2):
            try:
                x, y, z, diameter = (float(row[c]) for c in COLUMNS[1:])
            except (TypeError, ValueError):
                raise InputError(f"{path}: line {line} has a non-numeric coordinate or diameter.") from None
            nodules[row["seriesuid"]].append((x, y, z, diameter / 2))
    return nodules


def nodule_free_runs(header: Grid, nodules, margin_mm: float = 0.0) -> list[tuple[int, int]]:
    """[start, stop) runs of slices that no nodule reaches. A slice (index k spans k +/- 0.5) holds a
    nodule when that span overlaps the nodule's centre +/- (radius + margin) along the slice axis."""
    count = header.size[2]
    held = [False] * count
    for x, y, z, radius in nodules:
        centre = header.slice_index((x, y, z))
        reach = (radius + margin_mm) / header.spacing[2]
        first = max(0, math.floor(centre - reach - 0.5) + 1)        # smallest k with k + 0.5 > centre - reach
        last = min(count - 1, math.ceil(centre + reach + 0.5) - 1)  # largest k with k - 0.5 < centre + reach
        for k in range(first, last + 1):
            held[k] = True
    runs, start = [], None
    for k in range(count + 1):
        free = k < count and not held[k]
        if free and start is None:
            start = k
        elif not free and start is not None:
            runs.append((start, k))
            start = None
    return runs
