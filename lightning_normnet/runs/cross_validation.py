"""`normnet cv`: k-fold cross-validation of a method that trains on labelled data: the volumes of
data.train (the U-Net, the cycle-GAN) or COVID-SemiSeg's labelled slices (Inf-Net, Semi-Inf-Net); the
registry's `cv_items` says which.

Fold f (`cv.fold`, folds from `lightning_normnet.folds`) is a run folder `fold<f>/` of the cv folder,
trained on the other folds and scored on its own items; with `--run-dir`, a finished fold is not
trained again and an interrupted one resumes from its last checkpoint. The summary gives the metrics
per fold, mean and std over folds, and over all items pooled (cv_summary.md/json).
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import lightning as L
import numpy as np
from omegaconf import OmegaConf

from ..config import ConfigError, apply_overrides, load_config
from ..io import write_text
from ..methods import REGISTRY, method_of
from ..metrics import METRIC_KEYS
from ..scores import SCHEMA, VolumeScore, as_rows, finite, format_table, read_evaluation, summarize
from .run import Run, check_trainer, finished, open_run_folder, removed_if_refused, resume_point


def cross_validate(experiment: str, overrides: list[str] | tuple[str, ...] = (), chosen: str | None = None) -> Path:
    cfg = load_config(experiment, overrides)
    method = method_of(cfg)
    check_trainer(cfg)
    if method.cv_items is None:
        able = ", ".join(sorted(m.name for m in REGISTRY.values() if m.cv_items is not None))
        raise ConfigError(f"cv splits the labelled data a method is trained on; {method.name} is trained on none "
                          f"(methods that are: {able}).")
    method.datamodule(apply_overrides(cfg, ["data.test=[]"])).prepare_data()
    items = len(method.cv_items(cfg))
    if not 2 <= cfg.cv.folds <= items:
        raise ConfigError(f"cv.folds={cfg.cv.folds} needs 2 <= folds <= the {items} labelled items it splits.")
    cv_dir = open_run_folder(cfg, "cv", chosen)
    with removed_if_refused(cv_dir, cfg.output_dir, chosen):
        for fold in range(cfg.cv.folds):
            fold_dir = cv_dir / f"fold{fold}"
            if finished(fold_dir):
                continue
            fold_cfg = apply_overrides(cfg, [f"cv.fold={fold}", "data.test=[]"])
            fold_dir.mkdir(parents=True, exist_ok=True)
            write_text(fold_dir / "config.yaml", OmegaConf.to_yaml(fold_cfg))
            L.seed_everything(cfg.seed, workers=True)
            method.fit(fold_cfg, Run(fold_cfg, method, fold_dir, resume_point(fold_dir)))
    print(f"\n{cfg.cv.folds}-fold cross-validation ({cv_dir}):\n{summarize_folds(cv_dir, cfg.cv.folds)}")
    return cv_dir


def summarize_folds(cv_dir: Path, k: int) -> str:
    """cv_summary.json/.md from each fold's last validation: per fold, mean +/- std over folds, pooled."""
    per_fold = [read_evaluation(cv_dir / f"fold{fold}").last.volumes for fold in range(k)]
    pooled = [score for volumes in per_fold for score in volumes]
    fold_rows = {f"fold{f}": _pooled(volumes) for f, volumes in enumerate(per_fold)}
    over_folds = {}
    for key in METRIC_KEYS:
        means = np.array([fold_rows[f"fold{f}"][key][0] for f in range(k)], dtype=float)
        means = means[~np.isnan(means)]
        over_folds[key] = (float(means.mean()), float(means.std()), len(means)) if len(means) else (np.nan, np.nan, 0)
    table = {**fold_rows, "mean over folds": over_folds, "pooled": _pooled(pooled)}
    text = format_table(table)
    saved = {"schema": SCHEMA, "folds": [as_rows(volumes) for volumes in per_fold], "summary": finite(table)}
    write_text(cv_dir / "cv_summary.json", json.dumps(saved, indent=1))
    write_text(cv_dir / "cv_summary.md", text + "\n")
    return text


def _pooled(scores: list[VolumeScore]) -> dict:
    """The summary of scores from several datasets taken as one."""
    return summarize([replace(s, dataset="all") for s in scores])["all"]
