"""Labelled COVID-19 volumes, one per batch: what validation and `evaluate` predict and score.

A batch holds the prepared volume on the method's grid (H and M, to predict from) and names its case
folder in the cache, where the evaluation callback finds the truth on the scan's own grid.
"""
from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from lightning_normnet.datasets.cache import load_index
from lightning_normnet.datasets.sources import prepare_dataset, prepared_dir
from lightning_normnet.folds import held_out


class LabelledVolumes(Dataset):
    """(dataset name, prepared folder) pairs flattened into one list of volumes."""

    def __init__(self, sources: list[tuple[str, Path]], max_per_set: int | None = None,
                 only: set[tuple[str, str]] | None = None):
        self.items = []
        for dataset, folder in sources:
            cases = [c for c in load_index(folder)["cases"] if only is None or (dataset, c["name"]) in only]
            self.items += [(dataset, Path(folder) / case["name"], case["name"], case["source"])
                           for case in cases[:max_per_set]]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        dataset, folder, name, source = self.items[i]
        return {"image": torch.from_numpy(np.load(folder / "image.npy").astype(np.float32))[None],
                "lung": torch.from_numpy(np.load(folder / "lung.npy"))[None],
                "dataset": dataset, "name": name, "source": source, "case": str(folder)}


class EvaluationDataModule(L.LightningDataModule):
    """The labelled sets of `data.test`, for validation during training and for `normnet evaluate`."""

    def __init__(self, cfg: DictConfig):
        super().__init__()
        self.cfg = cfg
        self.volumes: LabelledVolumes | None = None

    def prepare_data(self) -> None:
        for name in self.cfg.data.test:
            prepare_dataset(self.cfg, "test", name)

    def setup(self, stage: str) -> None:
        if self.volumes is None:
            sources = [(name, prepared_dir(self.cfg, "test", name)) for name in self.cfg.data.test]
            self.volumes = LabelledVolumes(sources, self.cfg.data.max_test_volumes)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.volumes, batch_size=1, num_workers=min(2, self.cfg.data.num_workers))


class LabelledTrainingDataModule(EvaluationDataModule):
    """For methods that train on the labelled sets of `data.train` (prepared too). Under cross-validation
    (`cv.fold` = f) fold f of data.train is held out: not trained on, and validated on instead."""

    def prepare_data(self) -> None:
        for name in self.cfg.data.train:
            prepare_dataset(self.cfg, "train", name)
        super().prepare_data()

    def training_cases(self) -> list[Path]:
        """The prepared case folders to train on: every volume of data.train but the held-out fold."""
        volumes = train_volumes(self.cfg)
        held = held_out(list(volumes), self.cfg.cv, self.cfg.seed)
        return [folder for volume, folder in volumes.items() if volume not in held]

    def setup(self, stage: str) -> None:
        if self.cfg.cv.fold is not None and self.volumes is None:
            sources = [(name, prepared_dir(self.cfg, "train", name)) for name in self.cfg.data.train]
            self.volumes = LabelledVolumes(sources, only=held_out(list(train_volumes(self.cfg)), self.cfg.cv,
                                                                  self.cfg.seed))
        super().setup(stage)


def train_volumes(cfg: DictConfig) -> dict[tuple[str, str], Path]:
    """{(dataset, case): prepared folder} of the labelled volumes of data.train (prepared beforehand)."""
    folders = {name: prepared_dir(cfg, "train", name) for name in cfg.data.train}
    return {(name, case["name"]): folder / case["name"] for name, folder in folders.items()
            for case in load_index(folder)["cases"]}
