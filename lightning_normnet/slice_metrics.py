"""The Inf-Net paper's 2D metrics (Table II) for one probability map S_p in [0, 1] and its binary truth G.

Dice (key dsc), sensitivity and specificity of S_p > 0.5 (and our precision, psc, NaN without
a positive prediction); MAE = mean |S_p - G|; the structure measure
S_alpha (Fan et al., ICCV 2017; alpha = 0.5) of object- and region-level similarity; and the mean
enhanced-alignment measure E_phi (Fan et al., IJCAI 2018) over the binary maps S_p > k/256, k = 0..255.
"""
from __future__ import annotations

import math

import torch

EPS = 1e-8


def slice_metrics(prob: torch.Tensor, truth: torch.Tensor, threshold: float = 0.5) -> dict[str, float]:
    prob, truth = prob.double(), truth.bool()
    pred = prob > threshold
    tp, fp = (pred & truth).sum().item(), (pred & ~truth).sum().item()
    fn, tn = (~pred & truth).sum().item(), (~pred & ~truth).sum().item()
    return {"dsc": 2 * tp / (2 * tp + fp + fn + EPS), "psc": tp / (tp + fp) if tp + fp else math.nan,
            "sen": tp / (tp + fn + EPS), "spec": tn / (tn + fp + EPS),
            "s_alpha": structure_measure(prob, truth), "e_phi_mean": mean_enhanced_alignment(prob, truth),
            "mae": (prob - truth.double()).abs().mean().item()}


def structure_measure(prob: torch.Tensor, truth: torch.Tensor, alpha: float = 0.5) -> float:
    g = truth.double()
    share = g.mean().item()
    if share == 0:
        return 1 - prob.mean().item()
    if share == 1:
        return prob.mean().item()
    score = alpha * _object_similarity(prob, truth) + (1 - alpha) * _region_similarity(prob, g)
    return max(score, 0.0)


def _object_score(values: torch.Tensor) -> float:
    mean = values.mean().item()
    std = values.std().item() if values.numel() > 1 else 0.0
    return 2 * mean / (mean * mean + 1 + std + EPS)


def _object_similarity(prob: torch.Tensor, truth: torch.Tensor) -> float:
    share = truth.double().mean().item()
    return share * _object_score(prob[truth]) + (1 - share) * _object_score(1 - prob[~truth])


def _ssim(x: torch.Tensor, y: torch.Tensor) -> float:
    """Wang-Bovik quality index of two regions, with the S-measure's conventions for flat regions."""
    n = x.numel()
    mx, my = x.mean(), y.mean()
    vx = ((x - mx) ** 2).sum() / (n - 1 + EPS)
    vy = ((y - my) ** 2).sum() / (n - 1 + EPS)
    cov = ((x - mx) * (y - my)).sum() / (n - 1 + EPS)
    numerator, denominator = 4 * mx * my * cov, (mx ** 2 + my ** 2) * (vx + vy)
    if denominator != 0:
        return (numerator / (denominator + EPS)).item()
    return 1.0 if numerator == 0 else 0.0


def _region_similarity(prob: torch.Tensor, g: torch.Tensor) -> float:
    """The maps cut into four at the truth's centroid; SSIM of each part weighted by its area."""
    h, w = g.shape
    rows, cols = torch.arange(h, dtype=torch.double), torch.arange(w, dtype=torch.double)
    total = g.sum()
    # the centroid's 1-based index rounded half up (as the reference implementation): the first part ends there
    cy = math.floor(((g.sum(1) * rows).sum() / total).item() + 1.5)
    cx = math.floor(((g.sum(0) * cols).sum() / total).item() + 1.5)
    score = 0.0
    for ys in (slice(0, cy), slice(cy, h)):
        for xs in (slice(0, cx), slice(cx, w)):
            part_g, part_p = g[ys, xs], prob[ys, xs]
            if part_g.numel():
                score += part_g.numel() / (h * w) * _ssim(part_p, part_g)
    return score


def mean_enhanced_alignment(prob: torch.Tensor, truth: torch.Tensor, chunk: int = 32) -> float:
    """Mean over the 256 binary maps; `chunk` thresholds at a time bound the memory to chunk x H x W."""
    g = truth.double()
    share, n = g.mean(), g.numel()
    thresholds = torch.arange(256, dtype=torch.double, device=prob.device) / 256
    scores = []
    for part in thresholds.split(chunk):
        fm = (prob[None] > part[:, None, None]).double()                 # (chunk, H, W)
        if share == 0:
            enhanced = 1 - fm
        elif share == 1:
            enhanced = fm
        else:
            dfm = fm - fm.mean(dim=(1, 2), keepdim=True)
            dg = g - share
            align = 2 * dfm * dg / (dfm ** 2 + dg ** 2 + EPS)
            enhanced = (align + 1) ** 2 / 4
        scores.append(enhanced.sum(dim=(1, 2)) / (n - 1 + EPS))
    return torch.cat(scores).mean().item()
