"""Evaluation metrics of the NormNet paper, per volume and per dataset.

Table III: DSC = 2tp / (2tp + fn + fp), PSC = tp / (tp + fp), SEN = tp / (tp + fn),
plus specificity tn / (tn + fp) counted inside the lung (outside it every method
is trivially right). Table II: the bright lung voxels (H >= tau) classified as
healthy (positive) or lesion by the vote, with precision, sensitivity,
specificity and the AUC of the members' mean healthy probability. A ratio with
an empty denominator is NaN (e.g. PSC of an empty prediction) and is left out
of the dataset mean; DSC of an empty prediction on an empty truth is 1. The
records and their summaries are `scores`.
"""
from __future__ import annotations

import math

import torch
from torchmetrics.functional.classification import binary_auroc

SEGMENTATION_KEYS = ("dsc", "psc", "sen", "spec")
BRIGHT_KEYS = ("bright_precision", "bright_sensitivity", "bright_specificity", "bright_auc")
SLICE_KEYS = ("s_alpha", "e_phi_mean", "mae")      # Inf-Net's 2D measures (slice_metrics)
METRIC_KEYS = SEGMENTATION_KEYS + BRIGHT_KEYS + SLICE_KEYS


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


def confusion(pred: torch.Tensor, truth: torch.Tensor, region: torch.Tensor | None = None) -> tuple[int, ...]:
    """(tp, fp, fn, tn) of two boolean masks, counted inside `region` when given."""
    pred, truth = pred.bool(), truth.bool()
    if region is not None:
        pred, truth = pred[region.bool()], truth[region.bool()]
    tp = int((pred & truth).sum())
    fp = int((pred & ~truth).sum())
    fn = int((~pred & truth).sum())
    tn = int(pred.numel() - tp - fp - fn)
    return tp, fp, fn, tn


def segmentation_metrics(pred: torch.Tensor, truth: torch.Tensor, lung: torch.Tensor) -> dict[str, float]:
    tp, fp, fn, _ = confusion(pred, truth)
    _, fp_lung, _, tn_lung = confusion(pred, truth, lung)
    return {"dsc": 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn),
            "psc": _ratio(tp, tp + fp), "sen": _ratio(tp, tp + fn), "spec": _ratio(tn_lung, tn_lung + fp_lung)}


def bright_voxel_metrics(healthy_vote: torch.Tensor, healthy_probability: torch.Tensor, image: torch.Tensor,
                         lung: torch.Tensor, lesion: torch.Tensor, tau: float) -> dict[str, float]:
    """Table II on the bright lung voxels: positive = healthy tissue, negative = lesion."""
    bright = lung.bool() & (image >= tau)
    truth = ~lesion.bool()[bright]
    vote = healthy_vote.bool()[bright]
    tp = int((vote & truth).sum())
    fp = int((vote & ~truth).sum())
    fn = int((~vote & truth).sum())
    tn = int((~vote & ~truth).sum())
    both = bool(truth.any()) and bool((~truth).any())
    auc = float(binary_auroc(healthy_probability[bright].float(), truth.long())) if both else math.nan
    return {"bright_precision": _ratio(tp, tp + fp), "bright_sensitivity": _ratio(tp, tp + fn),
            "bright_specificity": _ratio(tn, tn + fp), "bright_auc": auc}
