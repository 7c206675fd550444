"""The procedural chest-CT phantom: the data every experiment uses when it names none.

From a seed it draws a chest in HU at any size and spacing: soft tissue and fat,
spine and ribs, air outside, two lungs of textured parenchyma (about -850 HU), a
branching airway tree (air lumen, bright walls) and branching vessel trees, the
regular bright structures NormNet must learn. COVID-like volumes add lesions by
a recipe unlike the training generator's (thresholded smooth random fields grown
from seeds near the pleura, mostly posterior, as ground-glass opacity with the
vessels still visible or as consolidation), so evaluation does not measure the
generator against itself. `write_phantom_dataset` writes NIfTI in the layout
the plain-folder reader (`datasets.folder`) reads, with the true lung masks in lungs/ (used with
lung_mask.backend=file).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .io import write_image

VERSION = 2  # bump when the recipe changes: cached phantoms are keyed by it
AIR, FAT, SOFT, BONE, PARENCHYMA, BLOOD, AIRWAY_WALL = -1000.0, -100.0, 40.0, 500.0, -860.0, 40.0, -150.0


def _smooth_noise(rng: np.random.Generator, shape, sigma_vox) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox, mode="wrap")
    return field / (field.std() + 1e-8)


class _Canvas:
    """Voxel grid with mm coordinates; draws capsules (tree segments) in their bounding boxes."""

    def __init__(self, size_xyz, spacing_xyz):
        self.shape = tuple(int(s) for s in reversed(size_xyz))          # (z, y, x)
        self.spacing = np.array(list(reversed(spacing_xyz)), float)     # (z, y, x) mm
        self.extent = np.array(self.shape) * self.spacing

    def grid(self):
        return np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(self.shape, self.spacing)],
                           indexing="ij", sparse=True)

    def capsule(self, target: np.ndarray, p0, p1, radius: float, value: float, brighten_only: bool = False) -> None:
        lo = np.floor((np.minimum(p0, p1) - radius) / self.spacing).astype(int).clip(0, self.shape)
        hi = np.ceil((np.maximum(p0, p1) + radius) / self.spacing).astype(int).clip(0, self.shape)
        if (hi <= lo).any():
            return
        axes = [(np.arange(a, b) + 0.5) * s for a, b, s in zip(lo, hi, self.spacing)]
        pts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
        seg = np.asarray(p1) - np.asarray(p0)
        t = np.clip(((pts - p0) @ seg) / max(seg @ seg, 1e-9), 0, 1)
        dist = np.linalg.norm(pts - (np.asarray(p0) + t[..., None] * seg), axis=-1)
        region = target[tuple(slice(a, b) for a, b in zip(lo, hi))]
        inside = dist <= radius
        region[inside] = np.maximum(region[inside], value) if brighten_only else value


def _tree(rng, lung: np.ndarray, canvas: _Canvas, start, direction, radius, length, depth, segments) -> None:
    """Recursive branching: each segment splits in two thinner, shorter children while inside the lung."""
    direction = direction / np.linalg.norm(direction)
    end = start + direction * length
    idx = np.floor(end / canvas.spacing).astype(int)
    if (idx < 0).any() or (idx >= canvas.shape).any() or not lung[tuple(idx)]:
        end = start + direction * length * 0.5
        idx = np.floor(end / canvas.spacing).astype(int)
        if (idx < 0).any() or (idx >= canvas.shape).any() or not lung[tuple(idx)]:
            return
    segments.append((start, end, radius))
    if depth == 0 or radius < 0.6:
        return
    for sign in (-1, 1):
        turn = rng.standard_normal(3)
        turn -= (turn @ direction) * direction
        child = direction + sign * 0.6 * turn / (np.linalg.norm(turn) + 1e-9) + 0.2 * rng.standard_normal(3)
        _tree(rng, lung, canvas, end, child, radius * rng.uniform(0.72, 0.85), length * rng.uniform(0.72, 0.88),
              depth - 1, segments)


def make_chest(seed: int, size_xyz=(160, 160, 80), spacing_xyz=(2.0, 2.0, 3.0), covid: bool = False):
    """(HU volume (z, y, x) float32, lung mask, lesion mask) of one phantom chest."""
    rng = np.random.default_rng(seed)
    canvas = _Canvas(size_xyz, spacing_xyz)
    z, y, x = canvas.grid()
    ez, ey, ex = canvas.extent
    cz, cy, cx = ez / 2, ey / 2 * rng.uniform(0.95, 1.05), ex / 2
    bx, by = ex * rng.uniform(0.40, 0.45), ey * rng.uniform(0.28, 0.33)
    body_r = ((x - cx) / bx) ** 2 + ((y - cy) / by) ** 2
    hu = np.full(canvas.shape, AIR, np.float32)
    hu[np.broadcast_to(body_r <= 1.0, canvas.shape)] = FAT
    hu[np.broadcast_to(body_r <= 0.82, canvas.shape)] = SOFT
    ribs = (np.abs(np.sqrt(body_r) - 0.87) < 0.035) & (np.sin(2 * np.pi * z / 24.0) > 0.4)
    hu[np.broadcast_to(ribs, canvas.shape)] = BONE
    spine = ((x - cx) ** 2 + (y - (cy + 0.72 * by)) ** 2) <= (0.16 * by) ** 2
    hu[np.broadcast_to(spine, canvas.shape)] = BONE

    lung = np.zeros(canvas.shape, bool)
    lz = ez * rng.uniform(0.42, 0.47)
    for side in (-1, 1):
        lcx = cx + side * bx * rng.uniform(0.42, 0.48)
        lx, ly = bx * rng.uniform(0.30, 0.36), by * rng.uniform(0.66, 0.74)
        shape = ((x - lcx) / lx) ** 2 + ((y - cy) / ly) ** 2 + ((z - cz) / lz) ** 2 <= 1.0
        lung |= shape & (z > cz - lz * 0.95)
    heart = ((x - (cx + 0.18 * bx)) / (0.32 * bx)) ** 2 + ((y - (cy - 0.2 * by)) / (0.45 * by)) ** 2 \
        + ((z - (cz - 0.45 * lz)) / (0.5 * lz)) ** 2 <= 1.0
    lung &= ~heart
    texture = _smooth_noise(rng, canvas.shape, 1.0) * 25.0
    hu[lung] = PARENCHYMA + texture[lung]

    vessels: list = []
    for side in (-1, 1):
        hilum = np.array([cz + rng.uniform(-0.1, 0.1) * lz, cy + rng.uniform(-0.1, 0.1) * by,
                          cx + side * bx * 0.22])
        for _ in range(6):
            direction = np.array([rng.uniform(-1.2, 1.2), rng.uniform(-0.8, 0.8), side * 1.0])
            _tree(rng, lung, canvas, hilum, direction, radius=rng.uniform(4.0, 6.0), length=0.45 * lx,
                  depth=7, segments=vessels)
    for p0, p1, r in vessels:
        canvas.capsule(hu, p0, p1, r, BLOOD + 30.0 * rng.standard_normal())

    airways: list = []
    carina = np.array([cz + 0.35 * lz, cy - 0.1 * by, cx])
    canvas.capsule(hu, np.array([ez, carina[1], cx]), carina, 8.0, AIRWAY_WALL)
    canvas.capsule(hu, np.array([ez, carina[1], cx]), carina, 6.5, AIR)
    for side in (-1, 1):
        _tree(rng, lung, canvas, carina, np.array([-0.5, 0.0, side * 1.0]), radius=5.5, length=0.25 * lx * 2,
              depth=5, segments=airways)

    for p0, p1, r in airways:
        canvas.capsule(hu, p0, p1, r + 1.2, AIRWAY_WALL, brighten_only=True)
    for p0, p1, r in airways:
        canvas.capsule(hu, p0, p1, r, AIR)

    lesion = np.zeros(canvas.shape, bool)
    if covid:
        lesion = _covid_lesions(rng, hu, lung, canvas)
    hu = ndimage.gaussian_filter(hu, 0.6) + rng.normal(0, 12.0, canvas.shape).astype(np.float32)
    return hu.astype(np.float32), lung, lesion


def _covid_lesions(rng, hu: np.ndarray, lung: np.ndarray, canvas: _Canvas) -> np.ndarray:
    """Peripheral, mostly posterior lesions: smooth random fields grown from seeds near the pleura."""
    depth_mm = ndimage.distance_transform_edt(lung, sampling=canvas.spacing)
    z, y, x = canvas.grid()
    posterior = np.broadcast_to(y / canvas.extent[1], lung.shape)
    candidates = np.argwhere(lung & (depth_mm > 3) & (depth_mm < 20) & (posterior > 0.5))
    if len(candidates) == 0:
        candidates = np.argwhere(lung)
    lesion = np.zeros_like(lung)
    shape_noise = _smooth_noise(rng, lung.shape, 4.0 / canvas.spacing)
    grain = _smooth_noise(rng, lung.shape, 1.5 / canvas.spacing)
    for _ in range(int(rng.integers(2, 6))):
        seed = candidates[rng.integers(len(candidates))] * canvas.spacing
        radius = rng.uniform(10, 35)
        dist = np.sqrt((z - seed[0]) ** 2 + (y - seed[1]) ** 2 + (x - seed[2]) ** 2)
        region = lung & ((1.0 - dist / radius) + 0.35 * shape_noise > 0.3)
        if not region.any():
            continue
        if rng.random() < 0.7:   # ground-glass: hazy, vessels stay visible through it
            level = rng.uniform(-650, -400) + 70.0 * grain[region]
            hu[region] = np.maximum(hu[region], level)
        else:                     # consolidation
            hu[region] = rng.uniform(-80, 40) + 20.0 * grain[region]
        lesion |= region
    return lesion


def write_phantom_dataset(root: str | Path, count: int, seed: int, size_xyz, spacing_xyz, covid: bool) -> Path:
    """Write `count` phantom chests as NIfTI: images/, lungs/ (and lesions/ for COVID-like volumes)."""
    root = Path(root)
    for i in range(count):
        name = f"{'covid' if covid else 'healthy'}_{i:03d}"
        image_path = root / "images" / f"{name}.nii.gz"
        if image_path.exists():
            continue
        hu, lung, lesion = make_chest(seed + i, size_xyz, spacing_xyz, covid)
        outputs = {"lungs": lung.astype(np.uint8), "images": hu}   # the image last: its presence means done
        if covid:
            outputs = {"lesions": lesion.astype(np.uint8), **outputs}
        for folder, array in outputs.items():
            image = sitk.GetImageFromArray(array)
            image.SetSpacing([float(s) for s in spacing_xyz])
            write_image(image, root / folder / f"{name}.nii.gz")
    return root


def write_phantom_semiseg(root: str | Path, volumes: int, seed: int, size_xyz, spacing_xyz, labelled: int = 50,
                          test: int = 48, unlabelled: int = 100) -> Path:
    """Axial slices of COVID-like phantoms in COVID-SemiSeg's layout (8-bit, HU window [-1250, 250]):
    lesion slices of all but the last volume labelled (Imgs/GT/Edge), the last volume's lesion slices
    as the test set, lesion-free and surplus slices unlabelled. Written once; `done` marks completion."""
    from PIL import Image

    root = Path(root)
    if (root / "done").is_file():
        return root
    train = root / "TrainingSet/LungInfection-Train"
    folders = {"img": train / "Doctor-label/Imgs", "gt": train / "Doctor-label/GT", "edge": train / "Doctor-label/Edge",
               "unlabelled": train / "Pseudo-label/Imgs", "test_img": root / "TestingSet/LungInfection-Test/Imgs",
               "test_gt": root / "TestingSet/LungInfection-Test/GT"}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    counts = {"labelled": 0, "test": 0, "unlabelled": 0}
    for v in range(volumes):
        hu, lung, lesion = make_chest(seed + v, size_xyz, spacing_xyz, covid=True)
        pixels = np.round((np.clip(hu, -1250, 250) + 1250) / 1500 * 255).astype(np.uint8)
        is_test = v == volumes - 1
        for z in np.flatnonzero(lung.any(axis=(1, 2))):
            name = f"phantom{v:02d}_{z:03d}"
            has_lesion = lesion[z].sum() >= 20
            if has_lesion and is_test and counts["test"] < test:
                counts["test"] += 1
                Image.fromarray(pixels[z]).save(folders["test_img"] / f"{name}.jpg")
                Image.fromarray(lesion[z].astype(np.uint8) * 255).save(folders["test_gt"] / f"{name}.png")
            elif has_lesion and not is_test and counts["labelled"] < labelled:
                counts["labelled"] += 1
                edge = lesion[z] & ~ndimage.binary_erosion(lesion[z])
                Image.fromarray(pixels[z]).save(folders["img"] / f"{name}.jpg")
                Image.fromarray(lesion[z].astype(np.uint8) * 255).save(folders["gt"] / f"{name}.png")
                Image.fromarray(edge.astype(np.uint8) * 255).save(folders["edge"] / f"{name}.png")
            elif not is_test and counts["unlabelled"] < unlabelled:
                counts["unlabelled"] += 1
                Image.fromarray(pixels[z]).save(folders["unlabelled"] / f"{name}.jpg")
    (root / "done").write_text(json.dumps(counts))
    return root
