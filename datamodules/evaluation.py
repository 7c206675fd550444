"""Labelled COVID-19 volumes on the model grid, one volume per batch, for validation and `evaluate`."""
from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from lightning_normnet.datasets.cache import load_index

from .data_sources import prepare_dataset, prepared_dir


class LabelledVolumes(Dataset):
    """(dataset name, prepared folder) pairs flattened into one list of volumes."""

    def __init__(self, sources: list[tuple[str, Path]], max_per_set: int | None = None,
                 only: set[tuple[str, str]] | None = None):
        self.items = []
        for dataset, folder in sources:
            cases = [c for c in load_index(folder)["cases"] if only is None or (dataset, c["name"]) in only]
            self.items += [(dataset, Path(folder) / case["name"], case["name"], case["source"])
                           for case in cases[:max_per_set]]

    @classmethod
    def from_config(cls, cfg: DictConfig) -> "LabelledVolumes":
        return cls([(name, prepared_dir(cfg, "test", name)) for name in cfg.data.test], cfg.data.max_test_volumes)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        dataset, folder, name, source = self.items[i]
        return {"image": torch.from_numpy(np.load(folder / "image.npy").astype(np.float32))[None],
                "lung": torch.from_numpy(np.load(folder / "lung.npy"))[None],
                "lesion": torch.from_numpy(np.load(folder / "lesion.npy"))[None],
                "dataset": dataset, "name": name, "source": source}


class EvaluationDataModule(L.LightningDataModule):
    """The labelled sets of `data.test`, for `trainer.validate` (normnet evaluate)."""

    def __init__(self, cfg: DictConfig):
        super().__init__()
        self.cfg = cfg
        self.volumes: LabelledVolumes | None = None

    def prepare_data(self) -> None:
        for name in self.cfg.data.test:
            prepare_dataset(self.cfg, "test", name)

    def setup(self, stage: str) -> None:
        if self.volumes is None:
            self.volumes = LabelledVolumes.from_config(self.cfg)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.volumes, batch_size=1, num_workers=min(2, self.cfg.data.num_workers))


class LabelledTrainingDataModule(EvaluationDataModule):
    """For the baselines that train on labelled COVID-19 sets: `data.train` is prepared too."""

    def prepare_data(self) -> None:
        for name in self.cfg.data.train:
            prepare_dataset(self.cfg, "train", name)
        super().prepare_data()
