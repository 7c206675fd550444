"""Where an experiment's data comes from: the phantom or a user's folder, prepared into the cache.

`prepare_dataset(cfg, role, name)` generates the phantom's NIfTI files when
needed and brings the prepared cache of a dataset up to date with its folder
(finished cases are kept, new ones prepared, the index rewritten);
`prepared_dir` only names that cache, for readers (every DDP rank).
Roles: 'healthy' (training) and 'test' (labelled evaluation sets).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from omegaconf import DictConfig

from lightning_normnet.datasets import discover_cases, grid_key, prepare_cases
from lightning_normnet.phantom import VERSION as PHANTOM_VERSION
from lightning_normnet.phantom import write_phantom_dataset

PHANTOM_SEEDS = {"healthy": 1000, "test": 5000}


def _phantom_count(cfg: DictConfig, role: str) -> int:
    return cfg.data.phantom.healthy_volumes if role == "healthy" else cfg.data.phantom.covid_volumes


def raw_root(cfg: DictConfig, role: str, name: str) -> Path:
    """The folder holding the raw volumes of a dataset; the phantom's depends on its settings."""
    if name == "phantom":
        ph = cfg.data.phantom
        tag = (f"v{PHANTOM_VERSION}-{'x'.join(str(s) for s in ph.size)}-"
               f"{'x'.join(f'{s:g}' for s in ph.spacing)}-n{_phantom_count(cfg, role)}")
        return Path(cfg.data.cache_dir) / "phantom" / tag / role
    return Path(cfg.data.healthy_root if role == "healthy" else cfg.data.test_root)


def prepared_dir(cfg: DictConfig, role: str, name: str) -> Path:
    root = raw_root(cfg, role, name)
    digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:6]
    return Path(cfg.data.cache_dir) / grid_key(cfg) / f"{role}-{name}-{digest}"


def prepare_dataset(cfg: DictConfig, role: str, name: str) -> Path:
    """Write what is missing: phantom volumes, prepared cases, the index. Returns the prepared folder."""
    root = raw_root(cfg, role, name)
    if name == "phantom":
        ph = cfg.data.phantom
        write_phantom_dataset(root, _phantom_count(cfg, role), PHANTOM_SEEDS[role], ph.size, ph.spacing,
                              covid=role == "test")
    out = prepared_dir(cfg, role, name)
    prepare_cases(discover_cases(root), out, cfg, training=role == "healthy", description=f"prepare {role} {name}")
    return out
