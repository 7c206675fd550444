"""The prepared cache: each case on the model grid, ready for training slabs and evaluation.

A dataset's cache folder is named by a hash of the settings that change its
arrays (`preparation_settings`: the pre-processing, the lung-mask backend, the
set's reading options, the folder it came from), so runs with equal settings
share it and a change never reads stale arrays. Per case: H (float16), M and the
lesion mask as .npy beside a meta.json written last, so an interrupted
`prepare` resumes where it stopped; meta.json keeps a fingerprint of the source files (size and
modification time), and a case whose files changed is prepared again. A labelled case also keeps what scoring
needs on the scan's own grid, never resampled (`ScanTruth`): the lesion mask
and the lung mask M' (bit-packed) and H' at the lung's voxels; meta.json holds
both grids, so a prediction on the model grid can be brought back. index.json lists the cases and what was
skipped, and is rewritten (atomically) each time the folder is brought up to date.
"""
from __future__ import annotations

import errno
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from omegaconf import DictConfig, OmegaConf
from rich.progress import track

from ..io import Grid, InputError, last_line, read_ct, read_mask, read_slice_labels, save_array, write_text
from ..lungmask import lung_mask
from ..preprocessing import prepare_volume, window
from .cases import Case, Listing

INDEX = "index.json"
SETTINGS = "settings.json"
VERSION = 5   # bump when preparation changes what it writes for equal settings
# Options that only choose which cases a set lists; they do not change any case's arrays.
LISTING_OPTIONS = {"exclude", "max_z_spacing_mm", "expert_only", "subsets", "remove_nodule_slices",
                   "nodule_margin_mm", "root"}


def preparation_settings(cfg: DictConfig, role: str, name: str, root: Path) -> dict:
    """Everything that changes the prepared arrays of dataset `name` in `role`."""
    pre, edges, lung = cfg.preprocessing, cfg.preprocessing.edge_removal, cfg.lung_mask
    removes_edges = edges.enabled and (role == "healthy" or edges.at_inference)
    lung_keys = ("backend",) if lung.backend == "file" else (
        "backend", "threshold_hu", "closing_radius_mm", "min_second_fraction", "airway_margin_mm")
    options = OmegaConf.to_container(cfg.datasets[name]) if name in cfg.datasets else {}
    return {
        "version": VERSION, "dataset": name, "role": role, "root": str(Path(root).resolve()),
        "spacing": list(pre.spacing), "orientation": pre.orientation, "window": list(pre.window),
        "in_plane_size": list(pre.in_plane_size), "mask_outside_lung": pre.mask_outside_lung,
        "edge_removal": {k: edges[k] for k in ("threshold", "boundary_width", "min_fraction")}
        if removes_edges else None,
        "lung_mask": {k: lung[k] for k in lung_keys},
        "reading": {k: v for k, v in options.items() if k not in LISTING_OPTIONS},
    }


def cache_folder(cfg: DictConfig, role: str, name: str, root: Path) -> Path:
    settings = preparation_settings(cfg, role, name, root)
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    spacing = "x".join(f"{s:g}" for s in cfg.preprocessing.spacing)
    return Path(cfg.data.cache_dir) / f"{spacing}mm" / f"{role}-{name}-{digest}"


def prepare_cases(listing: Listing, out_dir: str | Path, cfg: DictConfig, training: bool,
                  description: str = "prepare", settings: dict | None = None) -> dict:
    """Bring `out_dir` up to date with the listed cases (finished ones are kept); return the index.
    Every skipped case is printed in one line saying why."""
    _check_unique_names(listing.cases)
    out_dir = Path(out_dir)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    if settings is not None:
        _write_json(out_dir / SETTINGS, settings)
    for skip in listing.skipped:
        print(f"skipped {skip['case']}: {skip['reason']}")
    entries, skipped = [], list(listing.skipped)
    for case in track(listing.cases, description=description, transient=True):
        try:
            entries.append(_prepare_case(case, out_dir / case.name, cfg, training))
        except (InputError, RuntimeError, ValueError, ArithmeticError, OSError) as err:   # one bad volume ends no run
            if isinstance(err, torch.OutOfMemoryError) or getattr(err, "errno", None) == errno.ENOSPC:
                raise                       # the machine's fault, not the volume's
            reason = str(err) if isinstance(err, InputError) else \
                f"{case.image}: cannot be prepared ({type(err).__name__}: {last_line(err)})."
            skipped.append({"case": case.name, "reason": reason})
            print(f"skipped {case.name}: {reason}")
    index = {"cases": entries, "skipped": skipped, "training": training}
    if entries or not created:
        _write_json(out_dir / INDEX, index)
    else:                                # a refused new set leaves no cache folder behind
        shutil.rmtree(out_dir, ignore_errors=True)
    if not entries:
        raise InputError(f"{out_dir}: none of the {len(skipped)} volumes listed could be used (see the lines above).")
    return index


def read_case(case: Case, cfg: DictConfig, extra_mask: Path | None = None):
    """(image in HU, lesion mask or None, lung mask M', extra mask or None) of a case as its set ships it,
    cut to its slices; `extra_mask` is another mask file on the image's grid (e.g. a method's prediction)."""
    image = read_ct(case.image, case.stored_window)
    lesion = lung = extra = None
    if case.lesion:
        lesion = read_mask(case.lesion, image, "lesion mask", case.lesion_labels, case.mask_header_from_image)
    elif case.slice_labels:
        lesion = read_slice_labels(case.slice_labels, image)
    if cfg.lung_mask.backend == "file" and case.lung:
        lung = read_mask(case.lung, image, "lung mask", case.lung_labels, case.mask_header_from_image)
    if extra_mask is not None:
        extra = read_mask(extra_mask, image, "predicted mask")
    if case.slices is not None:
        start, stop = case.slices
        image, lesion, lung, extra = (None if x is None else x[:, :, start:stop] for x in (image, lesion, lung, extra))
    lung = lung_mask(image, cfg.lung_mask, lung, source=case.image)
    return image, lesion, lung, extra


def _check_unique_names(cases: list[Case]) -> None:
    """Two scans that map to one case name would share one cache folder: one read twice, the other never."""
    seen: dict[str, Case] = {}
    for case in cases:
        if case.name in seen:
            raise InputError(f"{seen[case.name].image} and {case.image} are both case '{case.name}': rename or "
                             "remove one of them.")
        seen[case.name] = case


def source_fingerprint(case: Case) -> str:
    """A digest of the size and modification time of every file a case is read from (each file of a DICOM
    folder): a scan replaced after `prepare` is prepared again."""
    paths = [p for p in (case.image, case.lesion, case.lung, case.slice_labels) if p is not None]
    files = [f for p in paths for f in (sorted(p.iterdir()) if p.is_dir() else [p])]
    stats = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()]
    return hashlib.sha1(json.dumps(stats).encode()).hexdigest()


def _prepare_case(case: Case, folder: Path, cfg: DictConfig, training: bool) -> dict:
    meta_path = folder / "meta.json"
    fingerprint = source_fingerprint(case)
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError:     # damaged (written by hand or another tool): prepared again
            meta = {}
        if meta.get("sources") == fingerprint:
            return meta
        meta_path.unlink()               # a replaced scan: its arrays are stale until prepared again
    image, lesion, lung, _ = read_case(case, cfg)
    if not training and lesion is None:
        raise InputError(f"{case.image}: evaluation case has no lesion mask.")
    prepared = prepare_volume(image, lung, cfg.preprocessing, lesion, training=training)
    save_array(prepared.image.astype(np.float16), folder / "image.npy")
    save_array(prepared.lung, folder / "lung.npy")
    if prepared.lesion is not None:
        save_array(prepared.lesion, folder / "lesion.npy")
        _save_truth(image, lesion, lung, cfg.preprocessing.window, folder)
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    meta = {"name": case.name, "source": str(case.image), "shape": list(prepared.image.shape),
            "lung_per_slice": prepared.lung.sum(axis=(1, 2)).astype(int).tolist(),
            "has_lesion": prepared.lesion is not None,
            "spacing": [round(s, 4) for s in image.GetSpacing()], "slices": image.GetSize()[2],
            "slice_range": list(case.slices) if case.slices else None,
            "lung_ml": _volume_ml(lung, voxel_ml),
            "lesion_ml": None if lesion is None or case.slice_labels else _volume_ml(lesion, voxel_ml),
            "lesion_from": "slice labels" if case.slice_labels else "mask" if lesion is not None else None,
            "grid": {"model": prepared.grid.as_dict(), "original": Grid.of(image).as_dict()},
            "sources": fingerprint}
    _write_json(meta_path, meta)
    return meta


@dataclass
class ScanTruth:
    """A labelled case on the scan's own grid, as scoring needs it: its lesion mask, its lung mask M' and
    H' (the windowed CT, zero outside M'); and the model grid its prepared arrays lie on."""
    lesion: np.ndarray   # (z, y, x) bool
    lung: np.ndarray     # (z, y, x) bool
    image: np.ndarray    # (z, y, x) float32
    grid: Grid
    model_grid: Grid


def _save_truth(image: sitk.Image, lesion: sitk.Image, lung: sitk.Image, hu_window, folder: Path) -> None:
    lung_array = sitk.GetArrayViewFromImage(lung) > 0
    save_array(np.packbits(sitk.GetArrayViewFromImage(lesion) > 0), folder / "original_lesion.npy")
    save_array(np.packbits(lung_array), folder / "original_lung.npy")
    lung_values = window(sitk.GetArrayViewFromImage(image)[lung_array], *hu_window)
    save_array(lung_values.astype(np.float16), folder / "original_lung_values.npy")


def load_truth(folder: str | Path) -> ScanTruth:
    """The ScanTruth of a prepared labelled case."""
    folder = Path(folder)
    meta = json.loads((folder / "meta.json").read_text())
    grid = Grid.from_dict(meta["grid"]["original"])
    count = int(np.prod(grid.shape))

    def unpack(name: str) -> np.ndarray:
        return np.unpackbits(np.load(folder / name), count=count).reshape(grid.shape).astype(bool)

    lesion, lung = unpack("original_lesion.npy"), unpack("original_lung.npy")
    image = np.zeros(grid.shape, np.float32)
    image[lung] = np.load(folder / "original_lung_values.npy")
    return ScanTruth(lesion, lung, image, grid, Grid.from_dict(meta["grid"]["model"]))


def _volume_ml(mask: sitk.Image, voxel_ml: float) -> float:
    return round(float(np.count_nonzero(sitk.GetArrayViewFromImage(mask))) * voxel_ml, 2)


def _write_json(path: Path, content: dict) -> None:
    write_text(path, json.dumps(content, indent=1))


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
