"""Random patches of labelled volumes for the supervised 3D U-Net (Mueller et al., MIScnn pipeline).

The prepared volumes of `data.train` (resampled to 1.58 x 1.58 x 2.70 mm, window [-1250, 250] HU, the
whole thorax kept: experiments/unet3d.yaml) are z-scored per volume; each item is one random
160 x 160 x 80 (x, y, z) patch, padded with air where the volume is smaller, labelled background 0,
lung 1, infection 2 (or background / infection with unet3d.classes=2), and augmented by TorchIO:
mirroring, elastic deformation, rotation, scaling, brightness, contrast, gamma and Gaussian noise,
each applied with probability p (0.15).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torchio as tio
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from .evaluation import LabelledTrainingDataModule
from .positions import training_epoch, training_loader


def class_labels(lung: np.ndarray, lesion: np.ndarray, classes: int) -> np.ndarray:
    """0 background, 1 lung, 2 infection; with two classes, 0 background and 1 infection."""
    if classes == 2:
        return lesion.astype(np.int64)
    return np.where(lesion, 2, np.where(lung, 1, 0)).astype(np.int64)


def _scale(lo: float, hi: float):
    def apply(x: torch.Tensor) -> torch.Tensor:
        return x * float(torch.empty(1).uniform_(lo, hi))
    return apply


def _contrast(lo: float, hi: float):
    def apply(x: torch.Tensor) -> torch.Tensor:
        mean = x.mean()
        return (x - mean) * float(torch.empty(1).uniform_(lo, hi)) + mean
    return apply


def augmentation(p: float) -> tio.Compose:
    """The eight augmentations of the MIScnn pipeline, each with probability p."""
    intensity = [tio.INTENSITY]
    return tio.Compose([
        tio.RandomFlip(axes=(0, 1, 2), flip_probability=0.5, p=p),
        tio.RandomElasticDeformation(num_control_points=7, max_displacement=7.5, p=p),
        tio.RandomAffine(scales=0, degrees=15, p=p),
        tio.RandomAffine(scales=(0.85, 1.25), degrees=0, p=p),
        tio.Lambda(_scale(0.75, 1.25), types_to_apply=intensity, p=p),       # brightness (multiplicative)
        tio.Lambda(_contrast(0.75, 1.25), types_to_apply=intensity, p=p),    # contrast around the mean
        tio.RandomGamma(log_gamma=(-0.35, 0.4), p=p),                        # gamma 0.7 .. 1.5
        tio.RandomNoise(std=(0, 0.1), p=p),
    ])


def random_patch(shape, patch, rng: np.random.Generator) -> tuple[slice, ...]:
    """A random window of size `patch` inside `shape` (the whole axis where the volume is smaller)."""
    return tuple(slice(start, start + min(p, s)) for s, p in zip(shape, patch)
                 for start in [int(rng.integers(s - min(p, s) + 1))])


class LabelledPatches(Dataset):
    """One epoch of `length` random patches, drawn anew (and reproducibly) for every epoch: items are
    seeded by (seed, epoch, i). `cases` are prepared case folders."""

    def __init__(self, cases: list[Path], patch_zyx, length: int, seed: int, classes: int,
                 transform: tio.Compose | None):
        self.cases = cases
        self.patch, self.length, self.seed, self.classes = tuple(patch_zyx), length, seed, classes
        self.transform, self.epoch = transform, 0
        self.statistics = []                    # per-volume mean and std for the z-score
        for folder in self.cases:
            image = np.load(folder / "image.npy").astype(np.float32)
            self.statistics.append((float(image.mean()), max(float(image.std()), 1e-6)))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch, i])
        c = int(rng.integers(len(self.cases)))
        folder, (mean, std) = self.cases[c], self.statistics[c]
        image = np.load(folder / "image.npy", mmap_mode="r")
        window = random_patch(image.shape, self.patch, rng)
        labels = class_labels(np.load(folder / "lung.npy", mmap_mode="r")[window],
                              np.load(folder / "lesion.npy", mmap_mode="r")[window], self.classes)
        volume = (np.asarray(image[window], dtype=np.float32) - mean) / std
        pad = [(0, p - s) for s, p in zip(volume.shape, self.patch)]
        volume = np.pad(volume, pad, constant_values=float(volume.min()))
        labels = np.pad(labels, pad)
        subject = tio.Subject(image=tio.ScalarImage(tensor=torch.from_numpy(volume)[None]),
                              label=tio.LabelMap(tensor=torch.from_numpy(labels)[None]))
        if self.transform is not None:     # TorchIO draws from torch's generator: seeded by the item too
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(rng.integers(2 ** 63)))
                subject = self.transform(subject)
        return {"image": subject["image"].data.float(), "label": subject["label"].data.long()}


class LabelledPatchDataModule(LabelledTrainingDataModule):
    """Training patches of `data.train`; validation on the labelled volumes of `data.test` (inherited)."""

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        self.train_set: LabelledPatches | None = None

    def setup(self, stage: str) -> None:
        u = self.cfg.unet3d
        if stage == "fit" and self.train_set is None:
            world = self.trainer.world_size if self.trainer else 1
            self.train_set = LabelledPatches(self.training_cases(), list(reversed(u.patch)),
                                             u.batches_per_epoch * u.batch_size * world, self.cfg.seed, u.classes,
                                             augmentation(u.augmentation_probability))
        super().setup(stage)

    def train_dataloader(self) -> DataLoader:
        """Reloaded every epoch (the trainer is told so): workers start with the dataset's new epoch."""
        self.train_set.epoch = training_epoch(self.trainer)
        return training_loader(self.train_set, self.trainer, self.cfg.unet3d.batch_size, self.cfg.seed, shuffle=False,
                               drop_last=True, num_workers=self.cfg.data.num_workers)
