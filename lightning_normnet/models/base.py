"""The contract every method's LightningModule keeps, so that train, evaluate, predict and compare treat
all methods alike.

A module is built from the run's whole configuration (saved in its checkpoints, so `predict` and
`evaluate` rebuild it with `load_from_checkpoint(path, config=...)`), and `predict_volume(H, M)`
segments a prepared volume on the method's own grid. Validation predicts each labelled volume and
returns the prediction; the evaluation callback brings it back onto the scan's own grid and scores it.
"""
from __future__ import annotations

import lightning as L
import torch
from omegaconf import OmegaConf

from ..inference import VolumePrediction


class SegmentationModule(L.LightningModule):
    def __init__(self, config: dict):
        super().__init__()
        self.save_hyperparameters({"config": config})
        self.cfg = OmegaConf.create(config)

    def predict_volume(self, image: torch.Tensor, lung: torch.Tensor) -> VolumePrediction:
        """The lesion mask of a prepared (1, 1, D, H, W) volume H with its lung mask M, on this grid."""
        raise NotImplementedError

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0):
        return self.predict_volume(batch["image"], batch["lung"])
