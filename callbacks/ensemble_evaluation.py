"""Validation-end evaluation: per-volume records gathered over ranks, counted once, summarised, logged.

Lightning's distributed sampler pads the validation set so every rank gets
the same number of batches, which repeats volumes; records are gathered to
every rank and de-duplicated by (dataset, volume) before the mean and std per
dataset are taken. Rank 0 writes evaluation.json, evaluation.md, volumes.csv and overlays/ in the
run folder and sends the table and overlay images to the logger.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import lightning as L
import numpy as np
import torch.distributed as dist
from PIL import Image

from lightning_normnet.io import write_text
from lightning_normnet.metrics import METRIC_KEYS, format_table, summarize

from .overlays import overlay_slice


def gather_records(records: list[dict]) -> list[dict]:
    """All ranks' records, each (dataset, name) once, sorted; a no-op without torch.distributed."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, records)
        records = [r for part in gathered for r in part]
    unique = {(r["dataset"], r["name"]): r for r in records}
    return [unique[key] for key in sorted(unique)]


class EnsembleEvaluation(L.Callback):
    def __init__(self, run_dir: str | Path | None = None, overlays: int = 4):
        self.run_dir = Path(run_dir) if run_dir else None
        self.overlays = overlays
        self.records: list[dict] = []
        self.pictures: list[tuple[str, np.ndarray]] = []
        self.history: list[dict] = []
        self.summary: dict = {}

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.records, self.pictures = [], []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.records.append(outputs["record"])
        if "lesion" in outputs and len(self.pictures) < self.overlays and trainer.is_global_zero:
            name = f"{outputs['record']['dataset']}/{outputs['record']['name']}"
            self.pictures.append((name, overlay_slice(batch["image"][0, 0], outputs["lesion"][0, 0],
                                                      batch["lesion"][0, 0])))

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        records = gather_records(self.records)
        self.summary = summarize(records)
        flat = {f"val/{dataset}/{key}": mean for dataset, metrics in self.summary.items()
                for key, (mean, _, n) in metrics.items() if n}
        flat.update({f"val/{dataset}/{key}_std": std for dataset, metrics in self.summary.items()
                     for key, (_, std, n) in metrics.items() if n})
        if flat:
            pl_module.log_dict(flat, sync_dist=False, rank_zero_only=True)
        if not trainer.is_global_zero:
            return
        step = trainer.global_step
        self.history.append({"step": step, "volumes": records, "summary": self.summary})
        table = format_table(self.summary)
        print(f"\nValidation at step {step} ({len(records)} volumes):\n{table}\n")
        if self.run_dir:
            self._write(records, step, table)
        self._log_images(trainer, step)

    def _write(self, records: list[dict], step: int, table: str) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_text(self.run_dir / "evaluation.json", json.dumps(_finite(self.history), indent=1))
        write_text(self.run_dir / "evaluation.md", table + "\n")
        keys = ["dataset", "name"] + [k for k in ("source",) + METRIC_KEYS if any(k in r for r in records)]
        new = not (self.run_dir / "volumes.csv").exists()
        with open(self.run_dir / "volumes.csv", "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["step"] + keys, restval="")
            if new:
                writer.writeheader()
            for record in records:
                writer.writerow({"step": step, **record})
        folder = self.run_dir / "overlays" / f"step{step:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        for name, picture in self.pictures:
            Image.fromarray(picture).save(folder / f"{name.replace('/', '_')}.png")

    def _log_images(self, trainer, step: int) -> None:
        for logger in trainer.loggers:
            if hasattr(logger, "log_image") and self.pictures:
                logger.log_image(key="val/overlay", images=[p for _, p in self.pictures],
                                 caption=[n for n, _ in self.pictures], step=step)


def _finite(value):
    """JSON has no NaN: undefined metrics are written as null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
