"""A plain folder of scans (any supported format), also the layout the phantom writes.

    <root>/images/<case>.nii.gz | .nrrd | .mhd | <case>/ (a DICOM series folder)
    <root>/lesions/<case><lesion_suffix>.*   lesion masks (evaluation sets)
    <root>/lungs/<case><lung_suffix>.*       lung masks (lung_mask.backend=file)
    <root>/slice_labels/<case>.csv          per-slice infected 0/1 (z_index, infected), for training sets
                                            without lesion masks (the cycle-GAN's infected/healthy slices)

A folder without images/ is read as the images folder itself; files there that
are not CT in HU (masks kept beside their scans) are skipped, each with a line.
Scans may be links (data/realscans-healthy links to ../shared/data); a link to
nothing is refused, naming it.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..io import InputError, case_name, is_image_file
from .cases import Case, Listing, by_name, require_root

RESERVED = {"images", "lesions", "lungs"}


def discover(root: Path, options, role: str) -> Listing:
    root = require_root(root)
    images = root / "images" if (root / "images").is_dir() else root
    listed = sorted(images.iterdir())
    for entry in listed:
        if entry.is_symlink() and not entry.exists():     # a scan missing from the set must not go unnoticed
            raise InputError(f"{entry}: links to {os.readlink(entry)}, which does not exist.")
    entries = [e for e in listed if not e.name.startswith(".")
               and not (images == root and e.name in RESERVED) and (is_image_file(e) or e.is_dir())]
    if not entries:
        raise InputError(f"{images}: holds no CT volumes (NIfTI, NRRD, MHD/MHA or DICOM series folders).")
    lesions = _masks(root / "lesions", options.get("lesion_suffix", ""))
    lungs = _masks(root / "lungs", options.get("lung_suffix", ""))
    labels_folder = root / "slice_labels"
    slice_labels = {p.stem: p for p in sorted(labels_folder.glob("*.csv"))} if labels_folder.is_dir() else {}
    listing = Listing()
    for entry in entries:
        name = case_name(entry)
        weak = role == "train" and name in slice_labels
        if role != "healthy" and name not in lesions and not weak:
            listing.skip(name, f"{entry}: labelled case has no lesion mask in {root / 'lesions'}"
                               + (" nor slice labels in slice_labels/." if role == "train" else "."))
            continue
        listing.cases.append(Case(name, entry, lesions.get(name), lungs.get(name),
                                  slice_labels=slice_labels.get(name) if weak else None))
    return listing


def _masks(folder: Path, suffix: str) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return by_name([p for p in sorted(folder.iterdir()) if is_image_file(p) or p.is_dir()], suffix)
