"""Healthy CT for NormNet: random lung-containing slabs, lesions synthesised on the device.

Workers only read slabs of H and M from the prepared cache (memory-mapped);
`on_after_batch_transfer` runs the lesion generator where the batch now lives
(the GPU when there is one), once per ensemble member with the member's own
generator, and builds each member's target.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from lightning_normnet.datasets.cache import largest_slab_lung, load_index, slab_lung_counts
from lightning_normnet.datasets.sources import prepare_dataset, prepared_dir
from lightning_normnet.lesions import synthesize
from lightning_normnet.targets import training_target

from .evaluation import EvaluationDataModule
from .positions import training_loader


class HealthySlabs(Dataset):
    """Item i: a reproducible random slab (seeded by seed and i), uniform over every lung-holding slab
    position of the set, so a long scan weighs more than a short one (a LUNA16 run between nodules)."""

    def __init__(self, folder: str | Path, slab, length: int, seed: int):
        self.folder, self.slab, self.length, self.seed = Path(folder), tuple(slab), length, seed
        index = load_index(folder)
        self.cases = index["cases"]
        self.m_max = largest_slab_lung(index, self.slab[0])
        if self.m_max == 0:
            raise ValueError(f"{folder}: no lung voxels in any prepared healthy volume.")
        self.starts = [np.flatnonzero(slab_lung_counts(case, self.slab[0]) > 0) for case in self.cases]
        self.offsets = np.cumsum([len(s) for s in self.starts])

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        position = int(np.random.default_rng([self.seed, i]).integers(self.offsets[-1]))
        c = int(np.searchsorted(self.offsets, position, side="right"))
        start = int(self.starts[c][position - (self.offsets[c - 1] if c else 0)])
        folder = self.folder / self.cases[c]["name"]
        depth = self.slab[0]
        image = np.load(folder / "image.npy", mmap_mode="r")[start:start + depth]
        lung = np.load(folder / "lung.npy", mmap_mode="r")[start:start + depth]
        if image.shape[0] < depth:   # a volume thinner than the slab: pad with empty slices
            pad = [(0, depth - image.shape[0]), (0, 0), (0, 0)]
            image, lung = np.pad(image, pad), np.pad(lung, pad)
        return {"image": torch.from_numpy(np.asarray(image, dtype=np.float32))[None], "item": i,
                "lung": torch.from_numpy(np.array(lung, dtype=bool))[None],
                "lam": torch.tensor(float(lung.sum()) / self.m_max, dtype=torch.float32)}


class HealthyCTDataModule(EvaluationDataModule):
    """Training slabs of healthy CT; validation on the labelled sets of `data.test` (inherited)."""

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        self._generators: list[torch.Generator] | None = None
        self.train_set: HealthySlabs | None = None

    def prepare_data(self) -> None:
        prepare_dataset(self.cfg, "healthy", self.cfg.data.healthy)
        super().prepare_data()

    def setup(self, stage: str) -> None:
        cfg = self.cfg
        if stage == "fit" and self.train_set is None:
            world = self.trainer.world_size if self.trainer else 1
            length = cfg.trainer.max_steps * cfg.data.batch_size * world
            self.train_set = HealthySlabs(prepared_dir(cfg, "healthy", cfg.data.healthy), cfg.data.slab,
                                          length, cfg.seed)
        super().setup(stage)

    def train_dataloader(self) -> DataLoader:
        return training_loader(self.train_set, self.trainer, self.cfg.data.batch_size, self.cfg.seed, shuffle=False,
                               drop_last=True, num_workers=self.cfg.data.num_workers,
                               pin_memory=torch.cuda.is_available())

    def generators(self, device: torch.device, first_item: int) -> list[torch.Generator]:
        """One generator per member on the batch's device, seeded by (seed, member, the batch's first item):
        the item numbers the rank and the step, so a resumed run synthesises what the unbroken one did."""
        if self._generators is None or self._generators[0].device != device:
            self._generators = [torch.Generator(device=device) for _ in range(self.cfg.model.members)]
        for member, generator in enumerate(self._generators):
            generator.manual_seed(int(np.random.SeedSequence([self.cfg.seed, member, first_item]).generate_state(1)[0]))
        return self._generators

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if self.trainer is None or not self.trainer.training:
            return batch
        return synthesize_members(batch, self.cfg, self.generators(batch["image"].device, int(batch["item"][0])))


def synthesize_members(batch: dict, cfg: DictConfig, generators: list[torch.Generator]) -> dict:
    """Each member's input A and target (Eq. 1 or an ablation), stacked on a leading member axis."""
    inputs, targets = [], []
    for generator in generators:
        image, lesion = synthesize(batch["image"], batch["lung"], batch["lam"], cfg.lesions, generator)
        inputs.append(image)
        targets.append(training_target(cfg.target.kind, batch["image"], batch["lung"], lesion, cfg.target.tau))
    return {"inputs": torch.stack(inputs), "targets": torch.stack(targets).long(), "lam": batch["lam"]}
