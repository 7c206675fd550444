"""The synthetic 'lesion' generator of NormNet (Sec. III-C), batched torch on the batch's device.

Shapes: per volume N_s ~ F[5 lam, 10 lam] small and N_m ~ F[5 lam, 10 lam] medium
ellipsoids and, with probability 0.2 lam, one large one; each is elastically
deformed (a smooth random displacement field: trilinear interpolation of a
control grid spanning the ellipsoid), randomly rotated and centred on a
random lung voxel. Ellipsoids are rendered in local boxes, batched per size class;
overlapping ones are merged into blobs G_j by a union-find over the overlaps.
Textures, per blob, in the blob's bounding box: a = scale(Gauss(U[0,1], sigma_a))
to [a_L, a_U] (Eq. 7-8), b1 = Bernoulli(a) (Eq. 2), b2 = Gauss(b1, sigma_b)
(Eq. 3-4), B_j = clip(beta b2, 0, 1) with beta = mu0 / mean(b2 | b2 > 0.2)
(Eq. 5-6); A = max(H, B_1, B_2, ...) (Eq. 9). Every range is a config value.
All randomness comes from one torch.Generator, so a seed gives one result.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

VOXEL_BUDGET = 1 << 24  # local-box voxels rendered at once
CHUNK = 8                # ellipsoids rendered at once (sorted by size, so a chunk's box fits them all)


def synthesize(healthy: torch.Tensor, lung: torch.Tensor, lam, cfg: DictConfig,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, G) for healthy H and lung M shaped (B, 1, D, H, W); lam a float or a (B,) tensor."""
    if healthy.dim() != 5 or healthy.shape != lung.shape:
        raise ValueError(f"healthy and lung must both be (B, 1, D, H, W); got {tuple(healthy.shape)} "
                         f"and {tuple(lung.shape)}.")
    sampler = _Sampler(generator, healthy.device)
    batch = healthy.shape[0]
    lam = torch.as_tensor(lam, dtype=torch.float32).to(healthy.device).expand(batch)
    lung = lung.bool().contiguous()
    ellipsoids = _sample_ellipsoids(sampler, lung, lam, cfg)
    image = healthy.clone(memory_format=torch.contiguous_format)
    lesion = torch.zeros_like(lung)
    if ellipsoids is None:
        return image, lesion
    voxels, ellipsoid_of_voxel = _render(ellipsoids, lung.shape[2:])
    voxels, blobs = _merge_blobs(voxels, ellipsoid_of_voxel, len(ellipsoids["batch"]))
    in_lung = lung.view(-1)[voxels]
    voxels, blobs = voxels[in_lung], blobs[in_lung]
    lesion.view(-1)[voxels] = True
    _paint_textures(sampler, image, voxels, blobs, cfg)
    return image, lesion


class _Sampler:
    """Draws from one generator on one device, so the stream (and result) depends on the seed only."""

    def __init__(self, generator: torch.Generator, device: torch.device):
        self.generator, self.device = generator, device

    def uniform(self, shape, low, high) -> torch.Tensor:
        u = torch.rand(shape, generator=self.generator, device=self.device)
        return low + (high - low) * u

    def normal(self, shape) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator, device=self.device)


def discrete_uniform(sampler: _Sampler, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """F[low, high] per element: integers round(low) .. round(high), each equally likely."""
    lo, hi = torch.floor(low + 0.5), torch.floor(high + 0.5)
    return (lo + torch.floor(sampler.uniform(lo.shape, 0.0, 1.0) * (hi - lo + 1))).long()


def random_rotations(sampler: _Sampler, count: int) -> torch.Tensor:
    """Uniform random rotation matrices (K, 3, 3) from normalised Gaussian quaternions."""
    q = sampler.normal((count, 4))
    w, x, y, z = (q / q.norm(dim=1, keepdim=True)).unbind(1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], dim=1).view(count, 3, 3)


def _sample_ellipsoids(sampler: _Sampler, lung: torch.Tensor, lam: torch.Tensor, cfg: DictConfig):
    """Counts, sizes, centres, rotations and elastic fields of every ellipsoid of the batch."""
    scale = cfg.length_scale
    count_lam = lam if cfg.counts_scale_with_lambda else torch.ones_like(lam)
    n_small = discrete_uniform(sampler, cfg.small_count[0] * count_lam, cfg.small_count[1] * count_lam)
    n_medium = discrete_uniform(sampler, cfg.medium_count[0] * count_lam, cfg.medium_count[1] * count_lam)
    n_large = (sampler.uniform(lam.shape, 0.0, 1.0) < cfg.large_probability * count_lam).long()
    has_lung = lung.flatten(1).any(1)
    classes = []
    for counts, (lo, hi) in ((n_small, cfg.small_semi_axes), (n_medium, cfg.medium_semi_axes),
                             (n_large, cfg.large_semi_axes)):
        counts = counts * has_lung
        batch = torch.repeat_interleave(torch.arange(len(counts), device=lung.device), counts)
        semi = sampler.uniform((len(batch), 3), lo * scale, hi * scale)
        classes.append((batch, semi))
    batch = torch.cat([c[0] for c in classes])
    total = len(batch)
    if total == 0:
        return None
    centres = torch.empty(total, 3, device=lung.device)
    batch_cpu = batch.tolist()
    for b in sorted(set(batch_cpu)):
        rows = (batch == b).nonzero().squeeze(1)
        voxels = lung[b, 0].nonzero()
        pick = (sampler.uniform((len(rows),), 0.0, 1.0) * len(voxels)).long().clamp_max(len(voxels) - 1)
        centres[rows] = voxels[pick].float()
    rotation = random_rotations(sampler, total) if cfg.rotation else \
        torch.eye(3, device=lung.device).expand(total, 3, 3)
    semi = torch.cat([c[1] for c in classes])
    grid = cfg.elastic_grid
    if cfg.elastic:
        magnitude = sampler.uniform((total,), *cfg.elastic_magnitude) * semi.mean(1)
        coarse = sampler.normal((total, 3, grid, grid, grid)).clamp(-2, 2) * magnitude.view(-1, 1, 1, 1, 1)
    else:
        magnitude = torch.zeros(total, device=lung.device)
        coarse = torch.zeros(total, 3, grid, grid, grid, device=lung.device)
    # a voxel p can land inside only if |p_i| <= max semi-axis + the largest displacement (2 std per component)
    reach = torch.ceil(semi.max(1).values + 2.0 * magnitude).long()
    size_class = torch.cat([torch.full((len(c[0]),), i, device=lung.device) for i, c in enumerate(classes)])
    return {"batch": batch, "centre": centres, "semi": semi, "rotation": rotation, "coarse": coarse,
            "reach": reach, "size_class": size_class}


def _render(ell: dict, spatial: tuple[int, int, int]):
    """Flat indices (into B*D*H*W) of every voxel inside every ellipsoid, with the ellipsoid's id.

    Ellipsoids are sorted by reach and rendered in chunks that share one local box, sized by the
    chunk's largest reach, so small ellipsoids are never evaluated on a large ellipsoid's box.
    """
    device = ell["centre"].device
    depth, height, width = spatial
    volume = depth * height * width
    limits = torch.tensor(spatial, device=device)
    order = torch.argsort(ell["reach"], descending=True)
    reaches = ell["reach"][order].tolist()
    all_voxels, all_ids = [], []
    start = 0
    while start < len(order):
        half = [min(reaches[start], n) for n in spatial]
        box_voxels = (2 * half[0] + 1) * (2 * half[1] + 1) * (2 * half[2] + 1)
        part = order[start:start + max(1, min(CHUNK, VOXEL_BUDGET // box_voxels))]
        start += len(part)
        axes = [torch.arange(-h, h + 1, device=device, dtype=torch.float32) for h in half]
        offsets = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # (bz, by, bx, 3)
        moved = offsets.unsqueeze(0) + elastic_displacement(ell["coarse"][part], axes, ell["reach"][part])
        body = torch.einsum("kzyxi,kij->kzyxj", moved, ell["rotation"][part])
        inside = ((body / ell["semi"][part].view(-1, 1, 1, 1, 3)) ** 2).sum(-1) <= 1.0
        k, z, y, x = inside.nonzero().unbind(1)
        c = ell["centre"][part].long()[k] + offsets[z, y, x].long()
        in_volume = ((c >= 0) & (c < limits)).all(1)
        k, c = k[in_volume], c[in_volume]
        all_voxels.append(ell["batch"][part][k] * volume + c[:, 0] * height * width + c[:, 1] * width + c[:, 2])
        all_ids.append(part[k])
    return torch.cat(all_voxels), torch.cat(all_ids)


def elastic_displacement(coarse: torch.Tensor, axes: list[torch.Tensor], reach: torch.Tensor) -> torch.Tensor:
    """Displacement (K, bz, by, bx, 3) at box offsets `axes` (z, y, x): each ellipsoid's (3, g, g, g) control
    grid spans [-reach, reach] of its own, so its shape never depends on the box it is rendered in.

    Trilinear interpolation as separable hat-function weights (align_corners semantics, constant beyond
    the grid), contracted one axis at a time.
    """
    grid = coarse.shape[-1]
    knots = torch.linspace(-1.0, 1.0, grid, device=coarse.device)

    def weights(axis: torch.Tensor) -> torch.Tensor:                      # (K, n, g)
        u = (axis.view(1, -1) / reach.view(-1, 1).float()).clamp(-1.0, 1.0)
        return (1.0 - (u.unsqueeze(-1) - knots).abs() * (grid - 1) / 2.0).clamp_min(0.0)

    wz, wy, wx = (weights(axis) for axis in axes)
    t = torch.einsum("kxl,kcijl->kcijx", wx, coarse)
    t = torch.einsum("kyj,kcijx->kciyx", wy, t)
    return torch.einsum("kzi,kciyx->kzyxc", wz, t)


def _merge_blobs(voxels: torch.Tensor, ids: torch.Tensor, count: int):
    """Blob id per covered voxel: ellipsoids that share a voxel merge (union-find over overlaps)."""
    unique, inverse = torch.unique(voxels, return_inverse=True)
    top = torch.full((len(unique),), -1, dtype=torch.long, device=voxels.device)
    top = top.scatter_reduce(0, inverse, ids, "amax")
    low = torch.full((len(unique),), count, dtype=torch.long, device=voxels.device)
    low = low.scatter_reduce(0, inverse, ids, "amin")
    pairs = torch.cat([torch.stack([ids, top[inverse]], 1), torch.stack([ids, low[inverse]], 1)])
    pairs = torch.unique(pairs[pairs[:, 0] != pairs[:, 1]], dim=0).tolist()
    parent = list(range(count))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i
    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = torch.tensor([find(i) for i in range(count)], device=voxels.device)
    return unique, roots[top]


def gaussian_blur(volume: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian filter of a (1, 1, D, H, W) tensor; 3-sigma kernel, edge values replicated."""
    radius = max(1, int(math.ceil(3.0 * sigma)))
    x = torch.arange(-radius, radius + 1, device=volume.device, dtype=volume.dtype)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = volume
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = len(kernel)
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        out = F.conv3d(F.pad(out, pad, mode="replicate"), kernel.view(shape))
    return out


def _texture_parameters(sampler: _Sampler, count: int, cfg: DictConfig) -> dict:
    """sigma_a, a_L, a_U, sigma_b, mu0 for every blob (a_U - a_L > gap by rejection)."""
    a_low = torch.empty(count, device=sampler.device)
    a_high = torch.empty(count, device=sampler.device)
    todo = torch.arange(count, device=sampler.device)
    while len(todo):
        lo = sampler.uniform((len(todo), 64), *cfg.a_range)
        hi = sampler.uniform((len(todo), 64), *cfg.a_range)
        ok = (hi - lo > cfg.a_min_gap) if cfg.a_min_gap > 0 else torch.ones_like(lo, dtype=torch.bool)
        first = ok.float().argmax(1)
        found = ok.any(1)
        rows = torch.arange(len(todo), device=sampler.device)
        a_low[todo[found]] = lo[rows, first][found]
        a_high[todo[found]] = hi[rows, first][found]
        todo = todo[~found]
    small = sampler.uniform((count,), 0.0, 1.0) < cfg.sigma_b_small_probability
    sigma_b = torch.where(small, sampler.uniform((count,), *cfg.sigma_b_small),
                          sampler.uniform((count,), *cfg.sigma_b_large))
    return {"sigma_a": sampler.uniform((count,), *cfg.sigma_a) * cfg.length_scale,
            "a_low": a_low, "a_high": a_high, "sigma_b": sigma_b * cfg.length_scale,
            "mu0": sampler.uniform((count,), *cfg.mu0)}


def scale_to_range(a2: torch.Tensor, blob: torch.Tensor, low, high) -> torch.Tensor:
    """Eq. 8: a = (a_U - a_L) (a2 - min) / (max - min) + a_L, min and max over the blob."""
    inside = a2[blob]
    a2_min, a2_max = inside.min(), inside.max()
    return (high - low) * (a2 - a2_min) / (a2_max - a2_min).clamp_min(1e-12) + low


def scale_salt_noise(b2: torch.Tensor, blob: torch.Tensor, mu0, threshold: float) -> torch.Tensor:
    """Eq. 5-6: clip(beta b2, 0, 1) in the blob, beta = mu0 / mean(b2 over blob voxels with b2 > threshold).

    A blob with no voxel above the threshold falls back to its plain mean (the paper leaves it undefined).
    """
    bright = blob & (b2 > threshold)
    reference = torch.where(bright.any(), (b2 * bright).sum() / bright.sum().clamp_min(1),
                            b2[blob].mean()).clamp_min(1e-6)
    return (mu0 / reference * b2).clamp(0.0, 1.0) * blob


def blob_texture(sampler: _Sampler, blob: torch.Tensor, sigma_a: float, a_low, a_high, sigma_b: float, mu0,
                 beta_threshold: float) -> torch.Tensor:
    """B_j on a (1, 1, d, h, w) box holding the blob mask `blob` (Eq. 2-8); zero outside the blob."""
    a = scale_to_range(gaussian_blur(sampler.uniform(blob.shape, 0.0, 1.0), sigma_a), blob, a_low, a_high)
    b1 = (sampler.uniform(blob.shape, 0.0, 1.0) < a).to(a.dtype)                       # Eq. 2
    return scale_salt_noise(gaussian_blur(b1, sigma_b), blob, mu0, beta_threshold)     # Eq. 3, 5, 6


def _paint_textures(sampler: _Sampler, image: torch.Tensor, voxels: torch.Tensor, blobs: torch.Tensor,
                    cfg: DictConfig) -> None:
    """A = max(A, B_j) for every blob, each textured in its own bounding box."""
    _, _, depth, height, width = image.shape
    volume, plane = depth * height * width, height * width
    order = torch.argsort(blobs, stable=True)
    voxels, blobs = voxels[order], blobs[order]
    names, counts = torch.unique_consecutive(blobs, return_counts=True)
    params = _texture_parameters(sampler, len(names), cfg)
    sigma_a, sigma_b = params["sigma_a"].tolist(), params["sigma_b"].tolist()
    for j, group_voxels in enumerate(voxels.split(counts.tolist())):
        b = int(group_voxels[0] // volume)
        local = group_voxels - b * volume
        zyx = torch.stack([local // plane, (local % plane) // width, local % width], 1)
        lo, hi = zyx.min(0).values.tolist(), (zyx.max(0).values + 1).tolist()
        box = [end - begin for begin, end in zip(lo, hi)]
        blob = torch.zeros((1, 1, *box), dtype=torch.bool, device=image.device)
        rel = zyx - torch.tensor(lo, device=image.device)
        blob[0, 0, rel[:, 0], rel[:, 1], rel[:, 2]] = True
        texture = blob_texture(sampler, blob, sigma_a[j], params["a_low"][j], params["a_high"][j],
                               sigma_b[j], params["mu0"][j],
                               cfg.beta_threshold)
        region = image[b:b + 1, :, lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        torch.maximum(region, texture.to(region.dtype), out=region)
