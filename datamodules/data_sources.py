"""Where an experiment's data comes from: the phantom or a user's folder, prepared into the cache.

`prepared_dir(cfg, role, name)` returns the folder of prepared volumes for the
healthy training set (role='healthy') or a labelled test set (role='test'),
generating the phantom's NIfTI files and preparing them first when needed.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from omegaconf import DictConfig

from lightning_normnet.datasets import INDEX, discover_cases, grid_key, prepare_cases
from lightning_normnet.phantom import VERSION as PHANTOM_VERSION
from lightning_normnet.phantom import write_phantom_dataset

PHANTOM_SEEDS = {"healthy": 1000, "test": 5000}


def raw_root(cfg: DictConfig, role: str, name: str) -> Path:
    """The folder holding the raw volumes of a dataset (the phantom's is generated on first use)."""
    if name == "phantom":
        ph = cfg.data.phantom
        tag = f"v{PHANTOM_VERSION}-{'x'.join(str(s) for s in ph.size)}-{'x'.join(f'{s:g}' for s in ph.spacing)}"
        root = Path(cfg.data.cache_dir) / "phantom" / tag / role
        count = ph.healthy_volumes if role == "healthy" else ph.covid_volumes
        return write_phantom_dataset(root, count, PHANTOM_SEEDS[role], ph.size, ph.spacing, covid=role == "test")
    return Path(cfg.data.healthy_root if role == "healthy" else cfg.data.test_root)


def prepared_dir(cfg: DictConfig, role: str, name: str) -> Path:
    """Prepared cache of one dataset; prepares what is missing (finished cases are kept)."""
    root = raw_root(cfg, role, name)
    out = Path(cfg.data.cache_dir) / grid_key(cfg) / f"{role}-{name}-{_root_tag(root)}"
    if not (out / INDEX).is_file():
        prepare_cases(discover_cases(root), out, cfg, training=role == "healthy",
                      description=f"prepare {role} {name}")
    return out


def _root_tag(root: Path) -> str:
    return hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:6]
