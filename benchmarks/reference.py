"""Plain NumPy/SciPy implementations of the lesion generator and the post-processings.

NormNet's recipe of Sec. III-C/D and the cycle-GAN method's lesion extraction written the obvious way,
one volume or slice at a time on the CPU, for the benchmark's ratios and as the tests' references.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation


def postprocess_reference(volume, lung, healthy, cfg) -> np.ndarray:
    """Eq. 10 with scipy.ndimage (uniform_filter; binary_dilation with its default element, = a ball for radius 1)."""
    bright = lung & ~healthy & (volume >= cfg.tau)
    full = lung & ~healthy & (volume > cfg.full_threshold)
    core = ndimage.uniform_filter(bright.astype(float), cfg.k_d, mode="constant") > cfg.t_d
    extent = ndimage.uniform_filter(full.astype(float), cfg.k_f, mode="constant") > cfg.t_f
    return ndimage.binary_dilation(core, iterations=cfg.dilation_radius) & extent & lung


def extract_lesions_reference(infected, healthy, lung, median_kernel=5, clustering="kmeans", gaussian_size=5,
                              sigma=1.0) -> np.ndarray:
    """The cycle-GAN post-processing slice by slice with scipy.ndimage and scikit-image (Otsu)."""
    from skimage.filters import threshold_otsu

    axis = np.arange(gaussian_size) - gaussian_size // 2
    g = np.exp(-axis ** 2 / (2 * sigma ** 2))
    kernel = np.outer(g, g) / g.sum() ** 2
    cross = ndimage.generate_binary_structure(2, 1)
    out = np.zeros(lung.shape, bool)
    for i, (x, h, m) in enumerate(zip(infected, healthy, lung)):
        difference = ndimage.median_filter(np.clip(x - h, 0, None) * m, size=median_kernel, mode="nearest")
        values = difference[m]
        if values.size < 2 or values.max() <= 0:
            continue
        if clustering == "kmeans":
            low, high = values.min(), values.max()
            for _ in range(50):
                upper = values > (low + high) / 2
                new = (values[~upper].mean() if (~upper).any() else low, values[upper].mean() if upper.any() else high)
                if np.allclose(new, (low, high)):
                    break
                low, high = new
            cut = (low + high) / 2
        else:
            cut = threshold_otsu(values)
        lesion = (difference > cut) & m
        lesion = ndimage.convolve(lesion.astype(float), kernel, mode="constant") > 0.5
        lesion = ndimage.binary_fill_holes(lesion)
        lesion = ndimage.binary_erosion(lesion, cross, border_value=1)
        out[i] = ndimage.binary_dilation(lesion, cross) & m
    return out


def synthesize_reference(healthy: np.ndarray, lung: np.ndarray, lam: float, cfg, rng: np.random.Generator):
    """(A, G) for one (D, H, W) volume: ellipsoids in local boxes, scipy labels, per-blob textures."""
    s = cfg.length_scale
    shape = np.array(healthy.shape)
    blobs = np.zeros(healthy.shape, bool)
    lung_voxels = np.argwhere(lung)
    margin = 1.0 + 2.0 * (cfg.elastic_magnitude[1] if cfg.elastic else 0.0)
    sizes = [(cfg.small_count, cfg.small_semi_axes), (cfg.medium_count, cfg.medium_semi_axes)]
    ellipsoids = []
    for (lo, hi), axes in sizes:
        n = rng.integers(int(np.floor(lo * lam + 0.5)), int(np.floor(hi * lam + 0.5)) + 1)
        ellipsoids += [np.array(axes) * s] * n
    if rng.random() < cfg.large_probability * lam:
        ellipsoids.append(np.array(cfg.large_semi_axes) * s)
    for lo_hi in ellipsoids:
        semi = rng.uniform(lo_hi[0], lo_hi[1], 3)
        centre = lung_voxels[rng.integers(len(lung_voxels))]
        reach = np.minimum(int(np.ceil(lo_hi[1] * margin)), shape)
        box = [np.arange(-r, r + 1) for r in reach]
        grid = np.stack(np.meshgrid(*box, indexing="ij"), -1).astype(float)
        if cfg.elastic:
            coarse = rng.normal(size=(3, cfg.elastic_grid, cfg.elastic_grid, cfg.elastic_grid)).clip(-2, 2)
            coarse *= rng.uniform(*cfg.elastic_magnitude) * semi.mean()
            zoom = [n / cfg.elastic_grid for n in grid.shape[:3]]
            grid = grid + np.stack([ndimage.zoom(c, zoom, order=1) for c in coarse], -1)
        rotation = Rotation.random(random_state=rng).as_matrix() if cfg.rotation else np.eye(3)
        inside = (((grid @ rotation) / semi) ** 2).sum(-1) <= 1
        coords = np.argwhere(inside) - reach + centre
        coords = coords[((coords >= 0) & (coords < shape)).all(1)]
        blobs[tuple(coords.T)] = True
    labels, count = ndimage.label(blobs & lung)
    image = healthy.copy()
    for j, box in enumerate(ndimage.find_objects(labels), start=1):
        blob = labels[box] == j
        a2 = ndimage.gaussian_filter(rng.random(blob.shape), rng.uniform(*cfg.sigma_a) * s, mode="nearest",
                                     truncate=3.0)
        while True:
            a_low, a_high = rng.uniform(*cfg.a_range, 2)
            if a_high - a_low > cfg.a_min_gap:
                break
        a = (a_high - a_low) * (a2 - a2[blob].min()) / max(np.ptp(a2[blob]), 1e-12) + a_low
        b1 = (rng.random(blob.shape) < a).astype(float)
        sigma_b = rng.uniform(*(cfg.sigma_b_small if rng.random() < cfg.sigma_b_small_probability
                                else cfg.sigma_b_large)) * s
        b2 = ndimage.gaussian_filter(b1, sigma_b, mode="nearest", truncate=3.0)
        bright = blob & (b2 > cfg.beta_threshold)
        beta = rng.uniform(*cfg.mu0) / max(b2[bright].mean() if bright.any() else b2[blob].mean(), 1e-6)
        image[box] = np.maximum(image[box], np.clip(beta * b2, 0, 1) * blob)
    return image, labels > 0
