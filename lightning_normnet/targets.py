"""NormNet's training target (Eq. 1) and the Table IV ablation variants."""
from __future__ import annotations

import torch


def healthy_target(healthy: torch.Tensor, lung: torch.Tensor, lesion: torch.Tensor, tau: float) -> torch.Tensor:
    """GT = pi(H >= tau) * (1 - G), inside the lung M: the bright healthy tissue (vessels, airway walls)."""
    return (healthy >= tau) & lung.bool() & ~lesion.bool()


def training_target(kind: str, healthy: torch.Tensor, lung: torch.Tensor, lesion: torch.Tensor,
                    tau: float) -> torch.Tensor:
    """`tissue`: Eq. 1; `areas`: M (1 - G) ('Areas' in Table IV); `lesions`: M G ('Lesions')."""
    if kind == "tissue":
        return healthy_target(healthy, lung, lesion, tau)
    if kind == "areas":
        return lung.bool() & ~lesion.bool()
    if kind == "lesions":
        return lung.bool() & lesion.bool()
    raise ValueError(f"unknown target kind {kind!r} (tissue, areas or lesions).")
