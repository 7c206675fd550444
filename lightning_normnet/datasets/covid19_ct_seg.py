"""COVID-19 CT Lung and Infection Segmentation Dataset (Ma et al., Zenodo 3757476): 20 labelled volumes.

    <root>/COVID-19-CT-Seg_20cases/ (or ct_scans/, 20_ncov_scan/)
        coronacases_org_001.nii.gz ...                         10 volumes in HU
        radiopaedia_org_covid-19-pneumonia-4_85506_1-dcm.nii.gz ...   10 volumes stored as 0-255
    <root>/Infection_Mask/coronacases_001.nii.gz, radiopaedia_4_85506_1.nii.gz ...   0/1
    <root>/Lung_Mask/...                  1 left lung, 2 right lung
    <root>/Lung_and_Infection_Mask/...    1 left, 2 right, 3 infection (used when the others are absent)

Two named sets read it: `coronacases` and `radiopaedia` (by file prefix). The
radiopaedia volumes hold HU windowed to [-1250, 250] and scaled to 0-255; they
are refused unless datasets.radiopaedia.undo_window=true maps them back.
"""
from __future__ import annotations

import re
from pathlib import Path

from ..io import Labels, StoredWindow, case_name
from .cases import Case, Listing, by_name, image_files, require_folder, require_root, subfolder

IMAGES = ("COVID-19-CT-Seg_20cases", "ct_scans", "20_ncov_scan")
INFECTION = ("Infection_Mask", "infection")
LUNG = ("Lung_Mask",)
COMBINED = ("Lung_and_Infection_Mask", "lung_infection")
IMAGE_NAME = (re.compile(r"^(coronacases)_org_(\d+)$"),
              re.compile(r"^(radiopaedia)_org_covid-19-pneumonia-(\d+)_(\d+)_(\d+)-d\w+$"))
BINARY = Labels((1,), (1,))


def mask_name(image_name: str) -> str | None:
    """The masks' name for an image: coronacases_org_001 -> coronacases_001,
    radiopaedia_org_covid-19-pneumonia-4_85506_1-dcm -> radiopaedia_4_85506_1."""
    for pattern in IMAGE_NAME:
        match = pattern.match(image_name)
        if match:
            return "_".join(match.groups())
    return None


def discover(root: Path, options, prefix: str) -> Listing:
    root = require_root(root)
    images = image_files(require_folder(root, IMAGES, "COVID-19-CT-Seg"))
    infection, lungs, combined = (_masks(root, names) for names in (INFECTION, LUNG, COMBINED))
    window = None
    if prefix == "radiopaedia":
        low, high = options.stored_window
        window = StoredWindow(low, high, 255.0, options.undo_window, "datasets.radiopaedia.undo_window")
    listing = Listing()
    for image in images:
        name = mask_name(case_name(image))
        if name is None:
            listing.skip(case_name(image), f"{image}: not a COVID-19-CT-Seg volume name.")
            continue
        if not name.startswith(prefix):
            continue
        if name in infection:
            lesion, lesion_labels = infection[name], BINARY
        elif name in combined:
            lesion, lesion_labels = combined[name], Labels((3,), (1, 2, 3))
        else:
            listing.skip(name, f"{image}: no infection mask ({INFECTION[0]}/ or {COMBINED[0]}/) for it.")
            continue
        if name in lungs:
            lung, lung_labels = lungs[name], Labels((1, 2), (1, 2))
        else:
            lung, lung_labels = combined.get(name), Labels((1, 2, 3), (1, 2, 3))
        listing.cases.append(Case(name, image, lesion, lung, lesion_labels, lung_labels, stored_window=window))
    return listing


def _masks(root: Path, names: tuple[str, ...]) -> dict[str, Path]:
    folder = subfolder(root, names)
    return by_name(image_files(folder)) if folder else {}
