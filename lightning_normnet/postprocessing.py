"""NormNet post-processing (Sec. III-D, Eq. 10) and the mask morphology it needs, on any device.

D = bright lung voxels (H >= tau) not voted healthy; F = all non-air lung voxels
(H > full_threshold) not voted healthy. I_e = mean_{k_d}(D) > t_d,
I_g = mean_{k_f}(F) > t_f, and I_final = dilate(I_e) * I_g, kept inside the lung.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from omegaconf import DictConfig


def _volumes(mask: torch.Tensor) -> torch.Tensor:
    return mask.float().reshape(-1, 1, *mask.shape[-3:])


def mean_filter(mask: torch.Tensor, kernel: int) -> torch.Tensor:
    """Centred k^3 box mean of a (..., D, H, W) mask; voxels beyond the border count as 0.

    Separable box sums by cumulative sums (a few operations per voxel whatever k); the
    sums of a 0/1 mask are integers, exact in float32.
    """
    x = _volumes(mask)
    half = kernel // 2
    for dim in (2, 3, 4):
        pad = [0] * 6
        pad[2 * (4 - dim)] = half + 1
        pad[2 * (4 - dim) + 1] = half
        total = F.pad(x, pad).cumsum(dim)
        length = x.shape[dim]
        x = total.narrow(dim, kernel, length) - total.narrow(dim, 0, length)
    return (x / kernel ** 3).reshape(mask.shape)


def structuring_element(radius: int, shape: str, device=None) -> torch.Tensor:
    """A ball (|offset| <= radius) or a cube of side 2 radius + 1; ball radius 1 is the 6-neighbourhood."""
    axis = torch.arange(-radius, radius + 1, device=device)
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    if shape == "cube":
        return torch.ones_like(z, dtype=torch.bool)
    return (z * z + y * y + x * x) <= radius * radius


def dilate(mask: torch.Tensor, radius: int, shape: str = "ball") -> torch.Tensor:
    """Binary dilation of a (..., D, H, W) mask with `structuring_element(radius, shape)`.

    The element is split into runs along x: each (dz, dy) row of the element is a 1D max-pool
    of its half-width, shifted by (dz, dy); the dilation is the maximum over rows.
    """
    if radius <= 0:
        return mask.bool()
    x = _volumes(mask)
    depth, height = x.shape[2], x.shape[3]
    runs: dict[int, torch.Tensor] = {}
    out = torch.zeros_like(x)
    for dz in range(-radius, radius + 1):
        for dy in range(-radius, radius + 1):
            rest = radius * radius - dz * dz - dy * dy
            if shape == "ball" and rest < 0:
                continue
            half = radius if shape == "cube" else int(rest ** 0.5)
            if half not in runs:
                runs[half] = x if half == 0 else F.max_pool3d(x, (1, 1, 2 * half + 1), stride=1, padding=(0, 0, half))
            # out[z, y] = max(out[z, y], run[z + dz, y + dy]) where both exist (zero beyond the border)
            target = out[:, :, max(0, -dz):depth - max(0, dz), max(0, -dy):height - max(0, dy)]
            source = runs[half][:, :, max(0, dz):depth - max(0, -dz), max(0, dy):height - max(0, -dy)]
            torch.maximum(target, source, out=target)
    return (out > 0.5).reshape(mask.shape)


def opening(mask: torch.Tensor, radius: int, shape: str = "ball") -> torch.Tensor:
    """Binary opening (erosion, then dilation, by the same element): removes specks thinner than the
    element and keeps the rest of the mask. Beyond the border counts as background."""
    if radius <= 0:
        return mask.bool()
    eroded = ~dilate(F.pad(~mask.bool(), (radius,) * 6, value=True), radius, shape)
    eroded = eroded[..., radius:-radius, radius:-radius, radius:-radius]
    return dilate(eroded, radius, shape)


def postprocess(volume: torch.Tensor, lung: torch.Tensor, healthy: torch.Tensor, cfg: DictConfig) -> torch.Tensor:
    """Lesion mask from H (`volume`, windowed [0, 1]), the lung M and the voted healthy voxels (Eq. 10)."""
    lung, healthy = lung.bool(), healthy.bool()
    candidates = lung & ~healthy
    bright = candidates & (volume >= cfg.tau)               # Fig. 4(d)
    full = candidates & (volume > cfg.full_threshold)       # Fig. 4(f)
    core = mean_filter(bright, cfg.k_d) > cfg.t_d           # I_e
    extent = mean_filter(full, cfg.k_f) > cfg.t_f           # I_g
    return dilate(core, cfg.dilation_radius, cfg.dilation_shape) & extent & lung
