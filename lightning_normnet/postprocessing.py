"""NormNet post-processing (Sec. III-D, Eq. 10) and the mask morphology it needs, on any device.

D = bright lung voxels (H >= tau) not voted healthy; F = all non-air lung voxels
(H > full_threshold) not voted healthy. I_e = mean_{k_d}(D) > t_d,
I_g = mean_{k_f}(F) > t_f, and I_final = dilate(I_e) * I_g, kept inside the lung.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from omegaconf import DictConfig


def mean_filter(mask: torch.Tensor, kernel: int) -> torch.Tensor:
    """Centred k^3 box mean of a (..., D, H, W) mask; voxels beyond the border count as 0."""
    x = mask.float().reshape(-1, 1, *mask.shape[-3:])
    out = F.avg_pool3d(x, kernel, stride=1, padding=kernel // 2, count_include_pad=True)
    return out.reshape(mask.shape)


def structuring_element(radius: int, shape: str, device=None) -> torch.Tensor:
    """A ball (|offset| <= radius) or a cube of side 2 radius + 1; ball radius 1 is the 6-neighbourhood."""
    axis = torch.arange(-radius, radius + 1, device=device)
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    if shape == "cube":
        return torch.ones_like(z, dtype=torch.bool)
    return (z * z + y * y + x * x) <= radius * radius


def dilate(mask: torch.Tensor, radius: int, shape: str = "ball") -> torch.Tensor:
    """Binary dilation of a (..., D, H, W) mask with `structuring_element(radius, shape)`."""
    if radius <= 0:
        return mask.bool()
    x = mask.float().reshape(-1, 1, *mask.shape[-3:])
    if shape == "cube":
        out = F.max_pool3d(x, 2 * radius + 1, stride=1, padding=radius)
    else:
        element = structuring_element(radius, shape, mask.device).float()[None, None]
        out = F.conv3d(x, element, padding=radius)
    return (out > 0.5).reshape(mask.shape)


def postprocess(volume: torch.Tensor, lung: torch.Tensor, healthy: torch.Tensor, cfg: DictConfig) -> torch.Tensor:
    """Lesion mask from H (`volume`, windowed [0, 1]), the lung M and the voted healthy voxels (Eq. 10)."""
    lung, healthy = lung.bool(), healthy.bool()
    candidates = lung & ~healthy
    bright = candidates & (volume >= cfg.tau)               # Fig. 4(d)
    full = candidates & (volume > cfg.full_threshold)       # Fig. 4(f)
    core = mean_filter(bright, cfg.k_d) > cfg.t_d           # I_e
    extent = mean_filter(full, cfg.k_f) > cfg.t_f           # I_g
    return dilate(core, cfg.dilation_radius, cfg.dilation_shape) & extent & lung
