"""Datasets on disk and the prepared cache that training and evaluation read.

Folder layout (what the phantom writes, and what a user's plain folder needs):

    <root>/images/<case>.nii.gz | .nrrd | .mhd | <case>/ (DICOM series)
    <root>/lesions/<case>.*      lesion masks (evaluation sets)
    <root>/lungs/<case>.*        lung masks (lung_mask.backend=file)

A folder without images/ is read as the images folder itself. `prepare_cases`
turns cases into the cache: per case H (float16), M and the lesion mask as .npy
beside a meta.json, and an index.json listing the cases, the lung voxels of
every slice (for lambda = |M| / |M_max|) and the files that were skipped.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf
from rich.progress import track

from .io import InputError, case_name, is_image_file, read_ct, read_mask, save_array
from .lungmask import lung_mask
from .preprocessing import prepare_volume

INDEX = "index.json"


@dataclass(frozen=True)
class Case:
    name: str
    image: Path
    lesion: Path | None = None
    lung: Path | None = None


def _find_companion(folder: Path, name: str) -> Path | None:
    if not folder.is_dir():
        return None
    for entry in sorted(folder.iterdir()):
        if case_name(entry) == name and (is_image_file(entry) or entry.is_dir()):
            return entry
    return None


def discover_cases(root: str | Path) -> list[Case]:
    """Cases of a folder in the layout above, sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: dataset folder not found.")
    images = root / "images" if (root / "images").is_dir() else root
    reserved = {"lesions", "lungs", "images"}
    cases = []
    for entry in sorted(images.iterdir()):
        if entry.name.startswith(".") or (images == root and entry.name in reserved):
            continue
        if is_image_file(entry) or entry.is_dir():
            name = case_name(entry)
            cases.append(Case(name, entry, _find_companion(root / "lesions", name),
                              _find_companion(root / "lungs", name)))
    if not cases:
        raise InputError(f"{images}: holds no CT volumes (NIfTI, NRRD, MHD/MHA or DICOM series folders).")
    return cases


def grid_key(cfg: DictConfig) -> str:
    """Short hash of everything that changes prepared arrays, so a config change never reads stale data."""
    relevant = {"preprocessing": OmegaConf.to_container(cfg.preprocessing),
                "lung_mask": OmegaConf.to_container(cfg.lung_mask)}
    digest = hashlib.sha1(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:8]
    spacing = "x".join(f"{s:g}" for s in cfg.preprocessing.spacing)
    return f"{spacing}mm-{digest}"


def prepare_cases(cases: list[Case], out_dir: str | Path, cfg: DictConfig, training: bool,
                  description: str = "prepare") -> dict:
    """Preprocess cases into `out_dir`; unusable files are skipped and named. Returns the index."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries, skipped = [], []
    for case in track(cases, description=description, transient=True):
        try:
            entries.append(_prepare_case(case, out_dir / case.name, cfg, training))
        except InputError as err:
            skipped.append({"case": case.name, "reason": str(err)})
            print(f"skipped: {err}")
    index = {"cases": entries, "skipped": skipped, "training": training}
    tmp = out_dir / f".tmp-{INDEX}"
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, out_dir / INDEX)
    return index


def _prepare_case(case: Case, folder: Path, cfg: DictConfig, training: bool) -> dict:
    meta_path = folder / "meta.json"
    if meta_path.is_file():
        return json.loads(meta_path.read_text())
    image = read_ct(case.image)
    lesion = read_mask(case.lesion, image, what="lesion mask") if case.lesion else None
    if not training and lesion is None:
        raise InputError(f"{case.image}: evaluation case has no lesion mask in lesions/.")
    lung = lung_mask(image, cfg.lung_mask, case.lung, source=case.image)
    prepared = prepare_volume(image, lung, cfg.preprocessing, lesion, training=training)
    save_array(prepared.image.astype(np.float16), folder / "image.npy")
    save_array(prepared.lung, folder / "lung.npy")
    if prepared.lesion is not None:
        save_array(prepared.lesion, folder / "lesion.npy")
    meta = {"name": case.name, "source": str(case.image), "shape": list(prepared.image.shape),
            "lung_per_slice": prepared.lung.sum(axis=(1, 2)).astype(int).tolist(),
            "has_lesion": prepared.lesion is not None}
    tmp = folder / ".tmp-meta.json"
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, meta_path)
    return meta


def load_index(folder: str | Path) -> dict:
    path = Path(folder) / INDEX
    if not path.is_file():
        raise InputError(f"{path}: no prepared cache here (run `normnet prepare` first).")
    index = json.loads(path.read_text())
    if not index["cases"]:
        raise InputError(f"{path}: the cache holds no usable volume (all were skipped).")
    return index


def slab_lung_counts(case: dict, depth: int) -> np.ndarray:
    """Lung voxels of every slab of `depth` slices (one per start slice; a thinner volume is one slab)."""
    counts = np.asarray(case["lung_per_slice"], dtype=np.int64)
    return np.convolve(counts, np.ones(min(depth, len(counts)), dtype=np.int64), mode="valid")


def largest_slab_lung(index: dict, depth: int) -> int:
    """|M_max|: the most lung voxels any slab of `depth` slices holds over the training set."""
    return max(int(slab_lung_counts(case, depth).max()) for case in index["cases"])
