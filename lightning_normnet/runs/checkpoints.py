"""Checkpoints back to models: any method's, with the config it was trained with (plus `key=value`
overrides, e.g. inference settings). Several checkpoints of a method whose registry entry has an
ensemble (NormNet) vote together; mixing methods, or checkpoints of different grids or windows, is
refused in one sentence naming the two files."""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from callbacks.checkpointing import LOGGED_THROUGH

from ..config import ConfigError, config_from_checkpoint
from ..io import InputError, last_line
from ..methods import Method, method_of
from ..methods.fitting import as_dict
from ..models.base import SegmentationModule

# What places a model's voxels: checkpoints that differ here predict on different grids or windows.
GRID_KEYS = ("spacing", "orientation", "window", "in_plane_size", "mask_outside_lung")


def _read_checkpoint(path: str | Path) -> dict:
    """A checkpoint's content, memory-mapped (weights are read only where used); a missing, truncated or
    foreign file is refused in one sentence."""
    if not Path(path).is_file():
        raise InputError(f"{path}: checkpoint not found.")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:      # torch raises many kinds (zip, pickle, EOF, runtime) for a damaged file
        raise InputError(f"{path}: not a readable checkpoint ({type(err).__name__}: {last_line(err)}).") from None
    if not isinstance(saved, dict) or "state_dict" not in saved or "global_step" not in saved:
        raise InputError(f"{path}: not a Lightning checkpoint (no weights or step in it).")
    return saved


def saved_config(path: str | Path) -> DictConfig:
    """The configuration a checkpoint was trained with, over today's defaults."""
    saved = _read_checkpoint(path)
    try:
        config = saved["hyper_parameters"]["config"]
    except (KeyError, TypeError):
        raise InputError(f"{path}: not a lightning-normnet checkpoint (it holds no run configuration).") from None
    try:
        return config_from_checkpoint(config)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def checkpoint_step(path: str | Path) -> int:
    """The global step a checkpoint was saved at."""
    return int(_read_checkpoint(path)["global_step"])


def logged_through(path: str | Path) -> int:
    """The last logger step (metrics.csv's `step`) a training checkpoint covers."""
    saved = _read_checkpoint(path)
    return int(saved.get(LOGGED_THROUGH, saved["global_step"] - 1))


def _check_compatible(paths: list[str], configs: list[DictConfig]) -> None:
    first, reference = paths[0], configs[0]
    for path, cfg in zip(paths[1:], configs[1:]):
        if cfg.model.kind != reference.model.kind:
            raise ConfigError(f"{first} is a {reference.model.kind} checkpoint and {path} a {cfg.model.kind} one: "
                              "only checkpoints of one method vote together.")
        for key in GRID_KEYS:
            a, b = (OmegaConf.to_container(c.preprocessing)[key] for c in (reference, cfg))
            if a != b:
                raise ConfigError(f"{first} and {path} were trained on different grids or windows "
                                  f"(preprocessing.{key} {a} vs {b}): they cannot vote together.")


def load_model(paths: list[str], overrides: list[str] | tuple[str, ...] = (),
               device: torch.device | str = "cpu") -> tuple[SegmentationModule, Method]:
    """The model of one checkpoint, or the ensemble of several, in eval mode on `device`, and its method."""
    configs = [saved_config(path) for path in paths]
    _check_compatible(paths, configs)
    try:
        method = method_of(configs[0])
    except ConfigError as err:
        raise ConfigError(f"{paths[0]}: {err}") from None
    if len(paths) > 1 and method.ensemble is None:
        raise ConfigError(f"{paths[0]} and {paths[1]} are {method.name} checkpoints, which do not vote: give one.")
    models = []
    for path, cfg in zip(paths, configs):
        cfg = config_from_checkpoint(OmegaConf.to_container(cfg), overrides)
        method_of(cfg)
        try:
            model = method.module.load_from_checkpoint(path, map_location=device, weights_only=False,
                                                       config=as_dict(cfg))
        except RuntimeError as err:
            if not any(k in str(err) for k in ("size mismatch", "Missing key", "Unexpected key")):
                raise
            raise InputError(f"{path}: its weights do not fit the {method.name} network its configuration "
                             f"describes ({str(err).strip().splitlines()[0]}).") from None
        _check_finite_weights(path, model)
        models.append(model)
    model = method.ensemble(models) if len(models) > 1 else models[0]
    return model.to(device).eval(), method


def _check_finite_weights(path: str | Path, model: torch.nn.Module) -> None:
    """Every weight finite: a run that diverged saves NaN, which would predict nothing."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise InputError(f"{path}: weight {name} holds NaN or infinite values (the training diverged); "
                             "use an earlier checkpoint.")
