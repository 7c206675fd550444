"""What a dataset reader hands to the cache: the cases it found and those it skipped, with why.

A `Case` names one CT volume and everything needed to read it as its set ships:
the mask files, how their labels are coded, whether the image is stored
windowed instead of in HU, and (LUNA16) which run of slices to keep.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..io import InputError, Labels, StoredWindow, case_name, is_image_file


@dataclass(frozen=True)
class Case:
    name: str
    image: Path
    lesion: Path | None = None
    lung: Path | None = None
    lesion_labels: Labels | None = None       # None: any non-zero voxel is lesion
    lung_labels: Labels | None = None
    stored_window: StoredWindow | None = None
    mask_header_from_image: bool = False      # the set's mask headers are known to be wrong
    slices: tuple[int, int] | None = None     # keep image slices [start, stop) only
    slice_labels: Path | None = None          # infected / not per slice, where there is no lesion mask


@dataclass
class Listing:
    """A dataset's cases, and the files it passed over, each with one sentence saying why."""
    cases: list[Case] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)

    def skip(self, name: str, reason: str) -> None:
        self.skipped.append({"case": name, "reason": reason})


def subfolder(root: Path, names: tuple[str, ...], depth: int = 2) -> Path | None:
    """The first folder under `root` (itself included, up to `depth` levels) whose name is one of `names`,
    ignoring case: unpacked archives nest their folders differently."""
    wanted = {n.lower() for n in names}
    level = [root]
    for _ in range(depth + 1):
        for folder in level:
            if folder.name.lower() in wanted:
                return folder
        level = [c for f in level for c in sorted(f.iterdir()) if c.is_dir() and not c.name.startswith(".")]
    return None


def image_files(folder: Path) -> list[Path]:
    """Image files anywhere under `folder`, sorted (archives sometimes unpack into a nested folder)."""
    return sorted(p for p in folder.rglob("*") if is_image_file(p) and not p.name.startswith("."))


def by_name(files: list[Path], suffix: str = "") -> dict[str, Path]:
    """{case name: file}, the name being the file name less its image suffix and `suffix`."""
    out = {}
    for path in files:
        name = case_name(path)
        if suffix and name.endswith(suffix):
            name = name[: -len(suffix)]
        if name in out:
            raise InputError(f"{out[name]} and {path} are both case '{name}': rename or remove one of them.")
        out[name] = path
    return out


def require_folder(root: Path, names: tuple[str, ...], dataset: str) -> Path:
    folder = subfolder(root, names)
    if folder is None:
        raise InputError(f"{root}: no {' or '.join(names)} folder here; is this the {dataset} folder?")
    return folder


def require_root(root: Path) -> Path:
    if not root.is_dir():
        raise InputError(f"{root}: dataset folder not found.")
    return root

