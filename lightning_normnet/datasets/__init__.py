"""The datasets an experiment selects by name, each read in the layout it ships in.

`discover(name, root, options, role)` lists a set's cases (see the module of
each set for its folder tree) and applies the filters every set has:
`exclude` (case names) and `max_z_spacing_mm`. `cache` turns the cases into
the prepared arrays that training and evaluation read.
"""
from __future__ import annotations

from pathlib import Path

from ..io import case_name, read_header
from . import covid19_ct_seg, folder, luna16, medseg, mosmed, uestc
from .cases import Listing

READERS = {
    "phantom": folder.discover,
    "folder": folder.discover,
    "luna16": lambda root, options, _role: luna16.discover(root, options),
    "coronacases": lambda root, options, _role: covid19_ct_seg.discover(root, options, "coronacases"),
    "radiopaedia": lambda root, options, _role: covid19_ct_seg.discover(root, options, "radiopaedia"),
    "medseg": lambda root, options, _role: medseg.discover(root, options),
    "mosmed": lambda root, _options, role: mosmed.discover(root, role),
    "uestc": lambda root, options, _role: uestc.discover(root, options),
}
HEALTHY_SETS = ("phantom", "folder", "luna16", "mosmed")
TEST_SETS = ("phantom", "folder", "coronacases", "radiopaedia", "medseg", "mosmed", "uestc")


def discover(name: str, root: str | Path, options, role: str) -> Listing:
    """The cases of dataset `name` under `root` for a role ('healthy' or 'test'), filters applied."""
    listing = READERS[name](Path(root), options, role)
    excluded = {str(e) for e in options.get("exclude", [])}
    max_z = options.get("max_z_spacing_mm")
    kept = []
    for case in listing.cases:
        if excluded & {case.name, case_name(case.image)}:
            listing.skip(case.name, f"{case.image}: excluded by datasets.{name}.exclude.")
        elif max_z is not None and (z := read_header(case.image).spacing[2]) >= max_z:
            listing.skip(case.name, f"{case.image}: z-spacing {z:.2f} mm is not below "
                                    f"datasets.{name}.max_z_spacing_mm={max_z:g}.")
        else:
            kept.append(case)
    listing.cases = kept
    return listing
