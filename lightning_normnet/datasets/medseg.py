"""MedSeg's COVID-19 CT segmentation dataset nr. 2: 9 axial Radiopaedia volumes in HU.

    <root>/rp_im/1.nii.gz ... 9.nii.gz
    <root>/rp_msk/1.nii.gz ...        1 ground-glass opacity, 2 consolidation, 3 pleural effusion
    <root>/rp_lung_msk/1.nii.gz ...   lung masks

This is the NormNet paper's "Radiopedia" column (Table I: 9 volumes), from which
it removed #6 (about 70 lesion voxels): datasets.medseg.exclude: ["6"].
Which labels count as lesion is datasets.medseg.lesion_labels (default 1 and 2:
effusion fills the pleural space, not the lung).
"""
from __future__ import annotations

from pathlib import Path

from ..io import InputError, Labels
from .cases import Case, Listing, by_name, image_files, require_folder, require_root, subfolder

LABELS = {1: "ground-glass opacity", 2: "consolidation", 3: "pleural effusion"}


def discover(root: Path, options) -> Listing:
    root = require_root(root)
    lesion_labels = tuple(int(v) for v in options.lesion_labels)
    if not lesion_labels or not set(lesion_labels) <= set(LABELS):
        raise InputError(f"datasets.medseg.lesion_labels={list(lesion_labels)}: choose among {LABELS}.")
    images = by_name(image_files(require_folder(root, ("rp_im",), "MedSeg")))
    masks = by_name(image_files(require_folder(root, ("rp_msk",), "MedSeg")))
    lung_folder = subfolder(root, ("rp_lung_msk",))
    lungs = by_name(image_files(lung_folder)) if lung_folder else {}
    listing = Listing()
    for name, image in sorted(images.items(), key=lambda item: (len(item[0]), item[0])):
        if name not in masks:
            listing.skip(name, f"{image}: no lesion mask rp_msk/{name}.*")
            continue
        listing.cases.append(Case(name, image, masks[name], lungs.get(name),
                                  lesion_labels=Labels(lesion_labels, tuple(LABELS))))
    return listing
