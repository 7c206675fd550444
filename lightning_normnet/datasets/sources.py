"""Where an experiment's data comes from, and the prepared cache it is read from.

`prepare_dataset(cfg, role, name)` writes the phantom's NIfTI files when needed,
lists a named set's cases (lightning_normnet.datasets), brings its cache up to
date (finished cases kept, new ones prepared, the index rewritten) and prints
what it loaded; `prepared_dir` only names that cache, for readers (every DDP rank).
Roles: 'healthy' (NormNet's training data), 'train' (labelled sets the baselines train on) and
'test' (labelled evaluation sets).
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from ..phantom import VERSION as PHANTOM_VERSION
from ..phantom import write_phantom_dataset, write_phantom_semiseg
from . import discover
from .cache import cache_folder, load_index, preparation_settings, prepare_cases
from .summary import format_summary, summary_row

PHANTOM_SEEDS = {"healthy": 1000, "train": 3000, "test": 5000, "slices": 7000}


def _phantom_count(cfg: DictConfig, role: str) -> int:
    ph = cfg.data.phantom
    return {"healthy": ph.healthy_volumes, "train": ph.train_volumes, "test": ph.covid_volumes}[role]


def _phantom_tag(cfg: DictConfig, count: int) -> str:
    ph = cfg.data.phantom
    return f"v{PHANTOM_VERSION}-{'x'.join(str(s) for s in ph.size)}-{'x'.join(f'{s:g}' for s in ph.spacing)}-n{count}"


def semiseg_dir(cfg: DictConfig, root: str | None) -> Path:
    """COVID-SemiSeg's folder: `root` (the user's copy), or else the phantom's slices in that layout."""
    if root:
        return Path(root)
    count = max(2, cfg.data.phantom.covid_volumes)
    return Path(cfg.data.cache_dir) / "phantom-semiseg" / _phantom_tag(cfg, count)


def prepare_semiseg(cfg: DictConfig, root: str | None) -> Path:
    """COVID-SemiSeg's folder, the phantom's slices written there first when no real folder is given."""
    folder = semiseg_dir(cfg, root)
    if not root:
        ph = cfg.data.phantom
        write_phantom_semiseg(folder, max(2, ph.covid_volumes), PHANTOM_SEEDS["slices"], ph.size, ph.spacing)
    return folder


def raw_root(cfg: DictConfig, role: str, name: str) -> Path:
    """The folder a dataset is read from: the phantom's depends on its settings; data.healthy_root and
    data.test_root name the healthy set's and the test folder's; a named set's is datasets.<name>.root."""
    if name == "phantom":
        return Path(cfg.data.cache_dir) / "phantom" / _phantom_tag(cfg, _phantom_count(cfg, role)) / role
    if role == "healthy" and cfg.data.healthy_root:
        return Path(cfg.data.healthy_root)
    if name == "folder":
        return Path(cfg.data.train_root if role == "train" else cfg.data.test_root)
    return Path(cfg.datasets[name].root)


def dataset_options(cfg: DictConfig, name: str):
    return cfg.datasets[name] if name in cfg.datasets else {}


def prepared_dir(cfg: DictConfig, role: str, name: str) -> Path:
    return cache_folder(cfg, role, name, raw_root(cfg, role, name))


def prepare_dataset(cfg: DictConfig, role: str, name: str) -> Path:
    """Write what is missing: phantom volumes, prepared cases, the index. Returns the prepared folder."""
    root = raw_root(cfg, role, name)
    if name == "phantom":
        ph = cfg.data.phantom
        write_phantom_dataset(root, _phantom_count(cfg, role), PHANTOM_SEEDS[role], ph.size, ph.spacing,
                              covid=role != "healthy")
    out = prepared_dir(cfg, role, name)
    listing = discover(name, root, dataset_options(cfg, name), role)
    index = prepare_cases(listing, out, cfg, training=role == "healthy", description=f"prepare {role} {name}",
                          settings=preparation_settings(cfg, role, name, root))
    print(format_summary([summary_row(name, role, index)]))
    return out


def dataset_summary(cfg: DictConfig, sources: list[tuple[str, str]]) -> list[list[str]]:
    """Summary rows of prepared (role, name) sources."""
    return [summary_row(name, role, load_index(prepared_dir(cfg, role, name))) for role, name in sources]
