"""Healthy CT for NormNet: random lung-containing slabs, lesions synthesised on the device.

Workers only read slabs of H and M from the prepared cache (memory-mapped), mirrored, rotated and
scaled in-plane when `data.augmentation` asks for it;
`on_after_batch_transfer` runs the lesion generator where the batch now lives
(the GPU when there is one), once per ensemble member with the member's own
generator, and builds each member's target.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from lightning_normnet.datasets.cache import largest_slab_lung, load_index, slab_lung_counts
from lightning_normnet.datasets.sources import prepare_dataset, prepared_dir
from lightning_normnet.lesions import synthesize
from lightning_normnet.targets import training_target

from .evaluation import EvaluationDataModule
from .positions import training_loader


@dataclass(frozen=True)
class SlabAugmentation:
    """In-plane variety for a handful of healthy scans (`data.augmentation`). The paper trains without it,
    its volumes being aligned (Sec. IV-B.3); four scans seen for thousands of steps are learned by heart
    (README, "Real scans"), and mirrored, turned and resized they are still healthy lungs."""
    mirror_probability: float = 0.0     # left-right mirror
    rotation_degrees: float = 0.0       # about the slab's axial centre, U[-r, r]
    scaling: float = 0.0                # each in-plane axis, U[1 - s, 1 + s]

    def draw(self, rng: np.random.Generator) -> tuple[bool, float, tuple[float, float]] | None:
        """(mirror, degrees, (scale y, scale x)) for one slab, or None when there is nothing to do."""
        if not (self.mirror_probability or self.rotation_degrees or self.scaling):
            return None
        mirror = bool(rng.random() < self.mirror_probability)
        degrees = float(rng.uniform(-self.rotation_degrees, self.rotation_degrees))
        scale_y, scale_x = (float(v) for v in rng.uniform(1 - self.scaling, 1 + self.scaling, size=2))
        return mirror, degrees, (scale_y, scale_x)


def transform_in_plane(image: torch.Tensor, lung: torch.Tensor, mirror: bool, degrees: float,
                       scale_yx: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """A slab (D, H, W) mirrored along W (left-right), then its content scaled by scale_yx and turned by
    `degrees` about the centre of each slice, in voxels (rigid in mm as the grid's x and y spacings are
    equal; bilinear image, nearest lung, zeros beyond the slab). Where the image was zero outside the lung
    (H = R' * M) it stays so."""
    if mirror:
        image, lung = image.flip(-1), lung.flip(-1)
    if degrees == 0 and scale_yx == (1.0, 1.0):
        return image, lung
    _, height, width = image.shape
    angle = math.radians(degrees)
    rotation = torch.tensor([[math.cos(angle), math.sin(angle)], [-math.sin(angle), math.cos(angle)]],
                            dtype=torch.float64)            # output -> input: the inverse turn, (x, y)
    half = torch.tensor([width / 2, height / 2], dtype=torch.float64)
    to_input = torch.diag(1 / half) @ torch.diag(torch.tensor([1 / scale_yx[1], 1 / scale_yx[0]],
                                                              dtype=torch.float64)) @ rotation @ torch.diag(half)
    theta = torch.cat([to_input, torch.zeros(2, 1, dtype=torch.float64)], dim=1).float()
    grid = F.affine_grid(theta[None], [1, 1, height, width], align_corners=False)   # one for every slice
    masked = not bool(image.masked_fill(lung, 0).any())
    image = F.grid_sample(image[None].float(), grid, mode="bilinear", align_corners=False)[0]
    lung = F.grid_sample(lung[None].float(), grid, mode="nearest", align_corners=False)[0] > 0.5
    return (image * lung if masked else image), lung


class HealthySlabs(Dataset):
    """Item i: a reproducible random slab (seeded by seed and i), uniform over every lung-holding slab
    position of the set, so a long scan weighs more than a short one (a LUNA16 run between nodules), and
    augmented in-plane from the same seed."""

    def __init__(self, folder: str | Path, slab, length: int, seed: int,
                 augmentation: SlabAugmentation = SlabAugmentation()):
        self.folder, self.slab, self.length, self.seed = Path(folder), tuple(slab), length, seed
        self.augmentation = augmentation
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
        rng = np.random.default_rng([self.seed, i])
        position = int(rng.integers(self.offsets[-1]))
        c = int(np.searchsorted(self.offsets, position, side="right"))
        start = int(self.starts[c][position - (self.offsets[c - 1] if c else 0)])
        folder = self.folder / self.cases[c]["name"]
        depth = self.slab[0]
        image = np.load(folder / "image.npy", mmap_mode="r")[start:start + depth]
        lung = np.load(folder / "lung.npy", mmap_mode="r")[start:start + depth]
        if image.shape[0] < depth:   # a volume thinner than the slab: pad with empty slices
            pad = [(0, depth - image.shape[0]), (0, 0), (0, 0)]
            image, lung = np.pad(image, pad), np.pad(lung, pad)
        image, lung = torch.from_numpy(np.asarray(image, dtype=np.float32)), torch.from_numpy(np.array(lung, bool))
        drawn = self.augmentation.draw(rng)
        if drawn is not None:
            image, lung = transform_in_plane(image, lung, *drawn)
        # a slab enlarged in-plane may hold more lung than the largest one: lambda stays a fraction
        return {"image": image[None], "item": i, "lung": lung[None],
                "lam": torch.tensor(min(float(lung.sum()) / self.m_max, 1.0), dtype=torch.float32)}


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
                                          length, cfg.seed, SlabAugmentation(**cfg.data.augmentation))
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
