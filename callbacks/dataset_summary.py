"""What a run was trained and evaluated on: the prepared datasets' summary table, written and logged.

Runs after the datamodule's prepare_data (the cache is complete), on rank 0:
datasets.md in the run folder, and a `datasets` table for every logger that
takes tables (W&B).
"""
from __future__ import annotations

from pathlib import Path

import lightning as L
from omegaconf import DictConfig

from lightning_normnet.datasets.sources import dataset_summary
from lightning_normnet.datasets.summary import COLUMNS, format_summary
from lightning_normnet.io import write_text


class DatasetSummary(L.Callback):
    def __init__(self, run_dir: str | Path, cfg: DictConfig, sources: list[tuple[str, str]]):
        self.run_dir, self.cfg, self.sources = Path(run_dir), cfg, sources
        self.rows: list[list[str]] = []

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.rows or not trainer.is_global_zero:
            return
        self.rows = dataset_summary(self.cfg, self.sources)
        write_text(self.run_dir / "datasets.md", format_summary(self.rows) + "\n")
        for logger in trainer.loggers:
            if hasattr(logger, "log_table"):
                logger.log_table(key="datasets", columns=COLUMNS, data=self.rows)
