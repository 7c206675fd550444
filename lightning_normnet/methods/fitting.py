"""The training schedules the built-in methods share, for a method's `fit` to call with its run.

Each trains `model` on the method's datamodule in the run folder, validates on
data.test (scored by the run's evaluation callback) and ends with the run's checkpoints/last.ckpt.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:
    from ..runs.run import Run


def as_dict(cfg: DictConfig) -> dict:
    """The config as a plain dict: what a SegmentationModule is built from and saves in its checkpoints."""
    return OmegaConf.to_container(cfg, resolve=True)


def _checkpoints(run: Run, steps: int | None = None, epochs: int | None = None) -> list[ModelCheckpoint]:
    """checkpoints/: one every `steps` training steps (or `epochs` epochs, whether or not it validates),
    last.ckpt always the latest, and best.ckpt, the weights of the best validation DSC so far (chosen on
    data.test: a model selection, not an unbiased score)."""
    folder = run.dir / "checkpoints"
    periodic = ModelCheckpoint(dirpath=folder, filename="step{step:06d}" if steps else "epoch{epoch:04d}",
                               auto_insert_metric_name=False, save_last=True, save_top_k=-1,
                               every_n_train_steps=steps, every_n_epochs=epochs,
                               save_on_train_epoch_end=bool(epochs))
    best = ModelCheckpoint(dirpath=folder, filename="best", monitor="val/dsc", mode="max", save_top_k=1,
                           auto_insert_metric_name=False)
    return [periodic, best]


def train_by_steps(run: Run, model: L.LightningModule) -> None:
    """trainer.max_steps steps; validation every trainer.val_check_interval steps and at the last step; a
    checkpoint every trainer.checkpoint_every steps (default: at each validation)."""
    t, datamodule = run.cfg.trainer, run.method.datamodule(run.cfg)
    interval = min(t.val_check_interval, t.max_steps)
    every = min(t.checkpoint_every or interval, t.max_steps)
    trainer = run.trainer(_checkpoints(run, steps=every), max_steps=t.max_steps, val_check_interval=interval,
                          check_val_every_n_epoch=None)
    trainer.fit(model, datamodule=datamodule)
    if t.max_steps % interval:   # fit validated at multiples of the interval; add the last step
        trainer.validate(model, datamodule=datamodule)
    run.finish(trainer)


def train_by_epochs(run: Run, model: L.LightningModule, epochs: int, val_every: int, callbacks: list | None = None,
                    **options) -> None:
    """`epochs` epochs, validating every `val_every` and after the last (unless a callback stopped the
    training at a validation); a checkpoint every trainer.checkpoint_every epochs (default: `val_every`)."""
    every, datamodule = max(1, min(val_every, epochs)), run.method.datamodule(run.cfg)
    saves = max(1, min(run.cfg.trainer.checkpoint_every or every, epochs))
    trainer = run.trainer((callbacks or []) + _checkpoints(run, epochs=saves), max_epochs=epochs,
                          check_val_every_n_epoch=every, **options)
    trainer.fit(model, datamodule=datamodule)
    if epochs % every and not trainer.should_stop:
        trainer.validate(model, datamodule=datamodule)
    run.finish(trainer)


def score_only(run: Run, model: L.LightningModule) -> None:
    """For a method that learns nothing: one validation, and its checkpoint."""
    trainer = run.trainer()
    trainer.validate(model, datamodule=run.method.datamodule(run.cfg))
    run.finish(trainer)
