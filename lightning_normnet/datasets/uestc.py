"""UESTC-COVID-19 (Wang et al., IEEE TMI 2020): 120 volumes with binary lesion masks.

    <root>/part1/image/<case>.nii.gz + part1/label/<case>.nii.gz   70 volumes labelled by non-experts
    <root>/part2/image/<case>.nii.gz + part2/label/<case>.nii.gz   50 volumes labelled by experts

The images hold HU windowed to [-1400, 100] and scaled to [0, 1]
(datasets.uestc.stored_window, mapped back to HU; files already in HU are used
as they are), and the labels' headers do not match their images: a label is
put on its image's grid when their sizes agree. The paper kept volumes with a
z-spacing below 5 mm (datasets.uestc.max_z_spacing_mm).
"""
from __future__ import annotations

from pathlib import Path

from ..io import InputError, StoredWindow
from .cases import Case, Listing, by_name, image_files, require_root, subfolder

PARTS = {"part1": "non-expert", "part2": "expert"}


def discover(root: Path, options) -> Listing:
    root = require_root(root)
    low, high = options.stored_window
    window = StoredWindow(low, high, 1.0, True, "datasets.uestc.stored_window")
    parts = ["part2"] if options.expert_only else list(PARTS)
    listing = Listing()
    for part in parts:
        folder = subfolder(root, (part,), depth=3)
        if folder is None:
            raise InputError(f"{root}: no {part}/ folder ({PARTS[part]} labels); is this the UESTC-COVID-19 folder?")
        images_folder, labels_folder = subfolder(folder, ("image",), 1), subfolder(folder, ("label",), 1)
        if images_folder is None or labels_folder is None:
            raise InputError(f"{folder}: needs image/ and label/ folders.")
        labels = by_name(image_files(labels_folder))
        for name, image in by_name(image_files(images_folder)).items():
            case = f"{part}-{name}"
            if name not in labels:
                listing.skip(case, f"{image}: no label {labels_folder / name}.*")
                continue
            listing.cases.append(Case(case, image, labels[name], stored_window=window, mask_header_from_image=True))
    return listing
