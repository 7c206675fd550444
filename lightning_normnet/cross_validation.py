"""k-fold cross-validation of the supervised U-Net over the labelled volumes of `data.train`.

Folds are deterministic from the seed: the volumes, sorted by (dataset, name), are shuffled by a seeded
permutation and dealt round-robin into k folds (sizes differ by at most one). Fold f trains on the
other folds and is scored on its own volumes; each fold is a run folder `fold<f>/` of the cv folder,
and the summary gives the metrics per fold, mean and std over folds, and over all volumes pooled.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .io import write_text
from .metrics import METRIC_KEYS, format_table, summarize


def fold_assignment(volumes: list[tuple[str, str]], k: int, seed: int) -> dict[tuple[str, str], int]:
    if not 2 <= k <= len(volumes):
        raise ValueError(f"{k}-fold cross-validation needs 2 <= k <= the {len(volumes)} labelled volumes.")
    ordered = sorted(volumes)
    permutation = np.random.default_rng(seed).permutation(len(ordered))
    return {ordered[i]: position % k for position, i in enumerate(permutation)}


def summarize_folds(cv_dir: Path, k: int) -> str:
    """cv_summary.json/.md from each fold's last validation: per fold, mean +/- std over folds, pooled."""
    per_fold, pooled = [], []
    for fold in range(k):
        volumes = json.loads((cv_dir / f"fold{fold}" / "evaluation.json").read_text())[-1]["volumes"]
        per_fold.append(volumes)
        pooled += volumes
    fold_rows = summarize([{**v, "dataset": f"fold{f}"} for f, volumes in enumerate(per_fold) for v in volumes])
    over_folds = {}
    for key in METRIC_KEYS:
        means = np.array([fold_rows[f"fold{f}"][key][0] for f in range(k)], dtype=float)
        means = means[~np.isnan(means)]
        over_folds[key] = (float(means.mean()), float(means.std()), len(means)) if len(means) else (np.nan, np.nan, 0)
    table = {**fold_rows, "mean over folds": over_folds,
             "all volumes": summarize([{**v, "dataset": "all"} for v in pooled])["all"]}
    text = format_table(table)
    write_text(cv_dir / "cv_summary.json", json.dumps({"folds": per_fold, "summary": table}, indent=1, default=str))
    write_text(cv_dir / "cv_summary.md", text + "\n")
    return text
