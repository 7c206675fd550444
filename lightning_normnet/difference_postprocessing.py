"""The cycle-GAN method's post-processing (Sec. 2.C of its paper), batched torch on (n, 1, H, W) slices.

difference = infected - synthetic healthy (kept where positive, inside the lung), a median filter
against noise and small islands, two-class k-means on the lung's values (lesion = the brighter
cluster; Otsu's threshold as the paper's variant), a 5x5 Gaussian to smooth the edge (cut at 0.5),
hole filling, and an erosion then a dilation of radius 1 to drop small isolated regions.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .postprocessing import dilate


def median_filter(x: torch.Tensor, kernel: int) -> torch.Tensor:
    half = kernel // 2
    patches = F.unfold(F.pad(x, (half,) * 4, mode="replicate"), kernel)         # (n, k*k, H*W)
    return patches.median(dim=1).values.view_as(x)


def kmeans_threshold(values: torch.Tensor, iterations: int = 50) -> torch.Tensor:
    """The boundary between two 1D k-means clusters (initialised at the extremes): midway between centres."""
    low, high = values.min(), values.max()
    for _ in range(iterations):
        boundary = (low + high) / 2
        upper = values > boundary
        new_low = values[~upper].mean() if (~upper).any() else low
        new_high = values[upper].mean() if upper.any() else high
        if torch.isclose(new_low, low) and torch.isclose(new_high, high):
            break
        low, high = new_low, new_high
    return (low + high) / 2


def otsu_threshold(values: torch.Tensor, bins: int = 256) -> torch.Tensor:
    """Otsu's threshold on a 256-bin histogram: the split maximising the between-class variance, returned
    as the centre of the last bin below it (scikit-image's convention)."""
    low, high = values.min(), values.max()
    if high <= low:
        return high
    hist = torch.histc(values.float(), bins, float(low), float(high)).double()
    centres = low + (torch.arange(bins, device=values.device, dtype=torch.double) + 0.5) * (high - low) / bins
    weight = hist.cumsum(0)
    mean = (hist * centres).cumsum(0)
    total, total_mean = weight[-1], mean[-1]
    between = (total_mean * weight / total - mean) ** 2 / (weight * (total - weight) + 1e-12)
    return centres[between[:-1].argmax()].to(values.dtype)     # the centre of the last background bin


def gaussian_smooth(mask: torch.Tensor, size: int = 5, sigma: float = 1.0) -> torch.Tensor:
    axis = torch.arange(size, dtype=torch.float32, device=mask.device) - size // 2
    g = torch.exp(-axis ** 2 / (2 * sigma ** 2))
    kernel = (g[:, None] * g[None, :]) / (g.sum() ** 2)
    return F.conv2d(mask.float(), kernel[None, None], padding=size // 2)


def _spread_along_runs(reached: torch.Tensor, background: torch.Tensor, dim: int) -> torch.Tensor:
    """Every run of consecutive background pixels along `dim` that holds a reached pixel becomes reached."""
    runs = torch.cumsum((~background).long(), dim=dim).movedim(dim, -1)    # a new run after each foreground pixel
    length = runs.shape[-1] + 1
    lines = torch.arange(runs[..., 0].numel(), device=runs.device).view(*runs.shape[:-1], 1)
    ids = (runs + lines * length).reshape(-1)
    hit = torch.zeros(lines.numel() * length, dtype=torch.long, device=runs.device)
    hit.scatter_reduce_(0, ids, reached.movedim(dim, -1).reshape(-1).long(), "amax")
    return hit[ids].view(runs.shape).bool().movedim(-1, dim) & background


def fill_holes(mask: torch.Tensor) -> torch.Tensor:
    """Background not 4-connected to the slice border becomes foreground. The flood from the border moves
    along whole rows, then whole columns, of background at a time, until nothing changes: as many passes
    as a path needs turns, not as many as it has pixels."""
    background = ~mask.bool()
    reached = torch.zeros_like(background)
    reached[..., 0, :], reached[..., -1, :] = background[..., 0, :], background[..., -1, :]
    reached[..., :, 0], reached[..., :, -1] = background[..., :, 0], background[..., :, -1]
    while True:
        grown = _spread_along_runs(_spread_along_runs(reached, background, -1), background, -2)
        if torch.equal(grown, reached):
            return ~reached
        reached = grown


def extract_lesions(infected: torch.Tensor, healthy: torch.Tensor, lung: torch.Tensor, median_kernel: int = 5,
                    clustering: str = "kmeans", gaussian_size: int = 5, gaussian_sigma: float = 1.0) -> torch.Tensor:
    """Lesion masks (n, 1, H, W) from infected slices and their synthetic healthy versions."""
    lung = lung.bool()
    difference = median_filter((infected - healthy).clamp(min=0) * lung, median_kernel)
    lesion = torch.zeros_like(lung)
    for i in range(difference.shape[0]):
        values = difference[i][lung[i]]
        if values.numel() < 2 or values.max() <= 0:
            continue
        cut = kmeans_threshold(values) if clustering == "kmeans" else otsu_threshold(values)
        lesion[i] = (difference[i] > cut) & lung[i]
    lesion = gaussian_smooth(lesion, gaussian_size, gaussian_sigma) > 0.5
    lesion = fill_holes(lesion)
    opened = ~dilate((~lesion)[:, :, None], 1)[:, :, 0]        # erosion, radius 1
    return dilate(opened[:, :, None], 1)[:, :, 0] & lung       # then dilation, radius 1
