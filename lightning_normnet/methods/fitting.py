"""The training schedules the built-in methods share, for a method's `fit` to call with its run.

Each trains `model` on the method's datamodule in the run folder, validates on
data.test (scored by the run's evaluation callback), saves checkpoints (callbacks.checkpointing), continues
from `run.resume` when the run is resumed, and ends with the run's checkpoints/last.ckpt.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import lightning as L
from omegaconf import DictConfig, OmegaConf

from callbacks.checkpointing import RunCheckpoints

if TYPE_CHECKING:
    from ..runs.run import Run


def as_dict(cfg: DictConfig) -> dict:
    """The config as a plain dict: what a SegmentationModule is built from and saves in its checkpoints."""
    return OmegaConf.to_container(cfg, resolve=True)


def train_by_steps(run: Run, model: L.LightningModule) -> None:
    """trainer.max_steps steps; validation every trainer.val_check_interval steps and at the last step; a
    checkpoint every trainer.checkpoint_every steps (default: at each validation)."""
    t, datamodule = run.cfg.trainer, run.method.datamodule(run.cfg)
    interval = min(t.val_check_interval, t.max_steps)
    every = min(t.checkpoint_every or interval, t.max_steps)
    trainer = run.trainer([RunCheckpoints(run.dir / "checkpoints", every, "steps")], max_steps=t.max_steps,
                          val_check_interval=interval, check_val_every_n_epoch=None)
    trainer.fit(model, datamodule=datamodule, ckpt_path=run.resume)
    if t.max_steps % interval:   # fit validated at multiples of the interval; add the last step
        trainer.validate(model, datamodule=datamodule)
    run.finish(trainer)


def train_by_epochs(run: Run, model: L.LightningModule, epochs: int, val_every: int, callbacks: list | None = None,
                    **options) -> None:
    """`epochs` epochs, validating every `val_every` and after the last (unless a callback stopped the
    training at a validation); a checkpoint every trainer.checkpoint_every epochs (default: `val_every`)."""
    every, datamodule = max(1, min(val_every, epochs)), run.method.datamodule(run.cfg)
    saves = max(1, min(run.cfg.trainer.checkpoint_every or every, epochs))
    trainer = run.trainer((callbacks or []) + [RunCheckpoints(run.dir / "checkpoints", saves, "epochs")],
                          max_epochs=epochs, check_val_every_n_epoch=every, **options)
    trainer.fit(model, datamodule=datamodule, ckpt_path=run.resume)
    if epochs % every and not trainer.should_stop:
        trainer.validate(model, datamodule=datamodule)
    run.finish(trainer)


def score_only(run: Run, model: L.LightningModule) -> None:
    """For a method that learns nothing: one validation, and its checkpoint."""
    trainer = run.trainer()
    trainer.validate(model, datamodule=run.method.datamodule(run.cfg))
    run.finish(trainer)
