"""Inf-Net's segmentation loss (Eq. 4): weighted IoU + lambda * weighted BCE, with the weights applied.

The weight of a pixel is 1 + emphasis * |mean of the mask over a k x k window - mask|: large near the
mask's boundary (hard pixels), 1 far from it. (The authors' code passes `reduce='none'` to a loss whose
truthy `reduce` means "average", so its BCE was never weighted; here it is.)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def boundary_weights(mask: torch.Tensor, kernel: int = 31, emphasis: float = 5.0) -> torch.Tensor:
    local_mean = F.avg_pool2d(mask, kernel, stride=1, padding=kernel // 2)
    return 1 + emphasis * (local_mean - mask).abs()


def weighted_bce(logits: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    bce = F.binary_cross_entropy_with_logits(logits, mask, reduction="none")
    return ((weight * bce).sum(dim=(2, 3)) / weight.sum(dim=(2, 3))).mean()


def weighted_iou(logits: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    probability = torch.sigmoid(logits)
    inter = (probability * mask * weight).sum(dim=(2, 3))
    union = ((probability + mask) * weight).sum(dim=(2, 3))
    return (1 - (inter + 1) / (union - inter + 1)).mean()


def structure_loss(logits: torch.Tensor, mask: torch.Tensor, bce_weight: float = 1.0, kernel: int = 31,
                   emphasis: float = 5.0) -> torch.Tensor:
    weight = boundary_weights(mask, kernel, emphasis)
    return weighted_iou(logits, mask, weight) + bce_weight * weighted_bce(logits, mask, weight)
