"""MosMedData COVID19_1110 (Morozov et al. 2020): 1110 studies sorted by severity, 50 with lesion masks.

    <root>/studies/CT-0/study_0001.nii.gz ...   CT-0 normal lungs, CT-1 ... CT-4 growing involvement
    <root>/masks/study_0255_mask.nii.gz ...     0/1 lesion masks of 50 CT-1 studies

As an evaluation set it is the 50 annotated studies; as a healthy set, the
normal CT-0 studies. Slice spacing varies between studies: mind
datasets.mosmed.max_z_spacing_mm.
"""
from __future__ import annotations

from pathlib import Path

from ..io import InputError, Labels
from .cases import Case, Listing, by_name, image_files, require_folder, require_root, subfolder

MASK_SUFFIX = "_mask"


def discover(root: Path, role: str) -> Listing:
    root = require_root(root)
    studies_folder = require_folder(root, ("studies",), "MosMedData")
    listing = Listing()
    if role == "healthy":
        normal = subfolder(studies_folder, ("CT-0",), depth=1)
        if normal is None:
            raise InputError(f"{studies_folder}: no CT-0/ folder of normal studies.")
        listing.cases = [Case(name, path) for name, path in by_name(image_files(normal)).items()]
        return listing
    studies = by_name(image_files(studies_folder))
    masks = by_name(image_files(require_folder(root, ("masks",), "MosMedData")), MASK_SUFFIX)
    for name, mask in masks.items():
        if name not in studies:
            listing.skip(name, f"{mask}: no study {name} under {studies_folder}.")
            continue
        listing.cases.append(Case(name, studies[name], mask, lesion_labels=Labels((1,), (1,))))
    return listing
