"""The one registry of methods. Each method is declared once, as a `Method`: its config groups, whether
it is label-free, its LightningModule, the data it trains on, how it is fitted and evaluated, and whether
its checkpoints vote together. train, evaluate, predict, cv and compare read it from here; nothing else
branches on a method's name. The built-in methods are declared in `builtin`; `register` adds another
from anywhere (README: "Adding a method").
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import lightning as L
from omegaconf import DictConfig

from datamodules.evaluation import EvaluationDataModule

from ..config import ConfigError, core_groups

if TYPE_CHECKING:
    from ..models.base import SegmentationModule
    from ..runs.run import Run


@dataclass(frozen=True)
class Method:
    name: str                                    # its model.kind
    label_free: bool                             # trained without lesion masks: compare's first group
    module: type[SegmentationModule]             # built from the config; also loads its checkpoints
    datamodule: Callable[[DictConfig], L.LightningDataModule]   # its training data (+ data.test); `prepare`
    fit: Callable[[DictConfig, Run], None]       # trains it in a run folder (the Run builds the Trainer)
    config_groups: tuple[str, ...] = ()          # its own top-level groups in its experiment file
    training_data: tuple[str, ...] = ()          # dataset roles it trains on: "healthy", "train" (data.train)
    evaluation_data: Callable[[DictConfig], L.LightningDataModule] = EvaluationDataModule
    ensemble: Callable[[list], SegmentationModule] | None = None   # several checkpoints as one model
    validate: Callable[[DictConfig], None] | None = None           # checks of its own groups' values
    # what `normnet cv` splits into folds: the labelled items its training reads, as (dataset, name), once
    # its datamodule has prepared them (None: it trains on no labels, nothing to cross-validate)
    cv_items: Callable[[DictConfig], list[tuple[str, str]]] | None = None
    # config keys (groups or dotted keys) that change only how a trained model predicts: sweep trials that
    # differ from each other only there share one training (what every method shares: runs.trial)
    inference_keys: tuple[str, ...] = ()


REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add a method (a later one of the same name replaces it)."""
    REGISTRY[method.name] = method
    return method


@lru_cache(maxsize=1)
def _core_groups() -> frozenset[str]:
    return frozenset(core_groups())


def method_of(cfg: DictConfig) -> Method:
    """The registered method of `cfg.model.kind`, once the config has exactly the groups the method adds
    to normnet.yaml's and the method's own checks pass."""
    method = REGISTRY.get(cfg.model.kind)
    if method is None:
        raise ConfigError(f"model.kind={cfg.model.kind!r} must be one of {', '.join(sorted(REGISTRY))}.")
    unknown = [k for k in cfg.keys() if k not in _core_groups() | set(method.config_groups)]
    if unknown:
        raise ConfigError(f"unknown top-level group {unknown[0]!r} for model.kind={method.name}.")
    missing = [g for g in method.config_groups if g not in cfg]
    if missing:
        raise ConfigError(f"model.kind={method.name} needs its {missing[0]!r} group (see experiments/).")
    if method.validate is not None:
        method.validate(cfg)
    return method


from . import builtin  # noqa: E402,F401  (declares the built-in methods)
