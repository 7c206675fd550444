"""Unpaired axial slices for the cycle-GAN: domain X infected (lesion pixels), domain Y healthy (no
lesion, some lung), both from the prepared labelled sets of `data.train`, as the method's paper took
both from COVID-19 patients' scans. Slices are H (lung-masked, window [-800, 100] HU) mapped to [-1, 1],
randomly cropped to `cyclegan.crop`. Validation: the 3D labelled sets of `data.test` (inherited).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .evaluation import LabelledTrainingDataModule
from .positions import training_epoch, training_loader


class UnpairedSlices(Dataset):
    """Item i: the (i mod |X|)-th infected slice and a random healthy slice, each randomly cropped; the
    draws are seeded by (seed, epoch, i), so every epoch pairs and crops anew, reproducibly."""

    def __init__(self, cases: list[Path], crop: int, min_lesion_pixels: int, min_lung_pixels: int, seed: int):
        self.crop, self.seed, self.epoch = crop, seed, 0
        self.infected, self.healthy = [], []
        for case in cases:
            lesion_per_slice = np.load(case / "lesion.npy", mmap_mode="r").sum(axis=(1, 2))
            lung_per_slice = np.load(case / "lung.npy", mmap_mode="r").sum(axis=(1, 2))
            for z, (lesion, lung) in enumerate(zip(lesion_per_slice, lung_per_slice)):
                if lesion >= min_lesion_pixels:
                    self.infected.append((case, z))
                elif lesion == 0 and lung >= min_lung_pixels:
                    self.healthy.append((case, z))
        if not self.infected or not self.healthy:
            raise ValueError(f"data.train holds {len(self.infected)} infected and {len(self.healthy)} healthy "
                             "slices; the cycle-GAN needs both (see cyclegan.min_lesion_pixels, min_lung_pixels).")

    def __len__(self) -> int:
        return max(len(self.infected), len(self.healthy))

    def _slice(self, item: tuple[Path, int], rng: np.random.Generator) -> torch.Tensor:
        folder, z = item
        image = np.load(folder / "image.npy", mmap_mode="r")[z]
        top = int(rng.integers(image.shape[0] - self.crop + 1))
        left = int(rng.integers(image.shape[1] - self.crop + 1))
        crop = np.asarray(image[top:top + self.crop, left:left + self.crop], dtype=np.float32)
        return torch.from_numpy(2 * crop - 1)[None]

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch, i])
        healthy = self.healthy[int(rng.integers(len(self.healthy)))]
        return {"x": self._slice(self.infected[i % len(self.infected)], rng), "y": self._slice(healthy, rng)}


class UnpairedSliceDataModule(LabelledTrainingDataModule):
    def setup(self, stage: str) -> None:
        c = self.cfg.cyclegan
        if stage == "fit":
            self.train_set = UnpairedSlices(self.training_cases(), c.crop, c.min_lesion_pixels, c.min_lung_pixels,
                                            self.cfg.seed)
        super().setup(stage)

    def train_dataloader(self) -> DataLoader:
        """Reloaded every epoch (the trainer is told so): workers start with the dataset's new epoch."""
        self.train_set.epoch = training_epoch(self.trainer)
        return training_loader(self.train_set, self.trainer, self.cfg.cyclegan.batch_size, self.cfg.seed,
                               shuffle=True, drop_last=True, num_workers=self.cfg.data.num_workers)
