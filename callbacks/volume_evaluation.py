"""Validation end: every labelled volume scored on the scan's own grid, counted once, written and logged.

Each method's validation step returns its prediction on its own grid; here it is brought back onto the
scan's grid and scored against the lesion mask as the dataset ships it (`scores.score_prediction`), so
all methods count the same voxels. Inf-Net's COVID-SemiSeg slices come already scored.
Lightning's distributed sampler pads the validation set so every rank gets the same number of batches,
which repeats volumes; scores are gathered to every rank and de-duplicated by (dataset, volume) before
the mean and std per dataset are taken. Rank 0 appends the validation to the run's evaluation files,
writes overlays/ and sends the table and overlay images to the logger.
"""
from __future__ import annotations

import lightning as L
import numpy as np
import torch.distributed as dist
from PIL import Image

from lightning_normnet.datasets.cache import load_truth
from lightning_normnet.inference import VolumePrediction
from lightning_normnet.scores import Evaluation, VolumeScore, logged_metrics, score_prediction

from .overlays import overlay_slice


def gather_scores(scores: list[VolumeScore]) -> list[VolumeScore]:
    """All ranks' scores, each (dataset, name) once, sorted; a no-op without torch.distributed."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, scores)
        scores = [s for part in gathered for s in part]
    unique = {(s.dataset, s.name): s for s in scores}
    return [unique[key] for key in sorted(unique)]


class VolumeEvaluation(L.Callback):
    def __init__(self, evaluation: Evaluation, overlays: int = 4):
        self.evaluation, self.overlays = evaluation, overlays
        self.scores: list[VolumeScore] = []      # volumes scored here, on their scans' grids
        self.given: list[VolumeScore] = []       # scores a module made itself (Inf-Net's 2D test slices)
        self.pictures: list[tuple[str, np.ndarray]] = []

    def on_fit_start(self, trainer, pl_module) -> None:
        """The run's evaluation files as it starts (none yet, or a resumed run's so far): unfinished."""
        if trainer.is_global_zero:
            self.evaluation.save()

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.scores, self.given, self.pictures = [], [], []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if isinstance(outputs, VolumeScore):
            self.given.append(outputs)
            return
        if not isinstance(outputs, VolumePrediction):
            raise TypeError(f"{type(pl_module).__name__}.validation_step must return a VolumePrediction "
                            f"(or a VolumeScore), not {type(outputs).__name__}.")
        truth = load_truth(batch["case"][0])
        score, lesion = score_prediction(outputs, batch["lung"], truth, batch["dataset"][0], batch["name"][0],
                                         batch["source"][0], pl_module.cfg.target.tau)
        self.scores.append(score)
        if len(self.pictures) < self.overlays and trainer.is_global_zero:
            self.pictures.append((f"{score.dataset}/{score.name}", overlay_slice(truth.image, lesion, truth.lesion)))

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        volumes, slices = gather_scores(self.scores), gather_scores(self.given)
        scores = volumes + slices
        flat = logged_metrics(volumes, slices)
        if flat:
            pl_module.log_dict(flat, sync_dist=False, rank_zero_only=True)
        if not trainer.is_global_zero:
            return
        step = trainer.global_step
        table = self.evaluation.append(step, scores)
        print(f"\nValidation at step {step} ({len(scores)} volumes):\n{table}\n")
        folder = self.evaluation.folder / "overlays" / f"step{step:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        for name, picture in self.pictures:
            Image.fromarray(picture).save(folder / f"{name.replace('/', '_')}.png")
        for logger in trainer.loggers:
            if hasattr(logger, "log_image") and self.pictures:
                logger.log_image(key="val/overlay", images=[p for _, p in self.pictures],
                                 caption=[n for n, _ in self.pictures], step=step)
