"""A run's checkpoints, and its stop on a scheduler's signal.

checkpoints/ holds one checkpoint every `every` steps or epochs (stepNNNNNN.ckpt, epochNNNN.ckpt),
last.ckpt (always the latest) and best.ckpt (the best validation DSC so far, chosen on data.test: a model
selection, not an unbiased score). Every file is written beside its place and renamed over it, so a kill
leaves the previous version whole.

A checkpoint is taken where a resumed run continues exactly: after a step's optimiser update (never
between accumulated batches); when that step validates, after its validation (Lightning would otherwise
skip it on resuming); at the last step of an epoch, at the epoch's end, after the module's own epoch end
and early stopping (and before Lightning's epoch schedulers, which it steps again on resuming).

SIGTERM (a scheduler's time limit), SIGUSR1 (SLURM's warning, `#SBATCH --signal=USR1@600`) and SIGINT
(Ctrl+C; a second one stops at once) end the current step, save last.ckpt at the next such place and
raise `Preempted` once Lightning has logged the step (at the next step's or epoch's start): the run exits
with 128 + the signal's number and one line saying how to resume. Under SLURM, SIGUSR1 also requeues
the job, which then resumes in the same run folder. All ranks stop at the same step: the signal is
reduced across ranks after every step.
"""
from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint

from lightning_normnet.io import write_atomically

SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
LOGGED_THROUGH = "normnet_logged_through"


class Preempted(Exception):
    """Training stopped by a signal after its checkpoint was saved."""

    def __init__(self, signum: int, step: int, checkpoint: Path, requeued: bool):
        self.signum, self.step, self.checkpoint, self.requeued = signum, step, checkpoint, requeued
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def requeue_slurm_job() -> bool:
    """`scontrol requeue` of this SLURM job (an array's task by its own id); whether it was accepted."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array else os.environ["SLURM_JOB_ID"]
    try:
        return subprocess.call(["scontrol", "requeue", job]) == 0
    except OSError:
        return False


def validates_after(trainer: L.Trainer) -> bool:
    """Whether the step just trained is followed by a validation with batches (Lightning's own rule, which
    it keeps private; before the first validation the number of batches is not known and taken as some)."""
    loop = trainer.fit_loop
    return loop.epoch_loop._should_check_val_fx(loop._data_fetcher) and sum(trainer.num_val_batches or [1]) > 0


class RunCheckpoints(Checkpoint):
    """A Checkpoint (so Lightning calls its epoch-end hook after the module's and early stopping's)."""

    def __init__(self, folder: Path, every: int, unit: str):
        """`every` steps (unit "steps") or epochs (unit "epochs")."""
        self.folder, self.every, self.unit = Path(folder), every, unit
        self.best = -math.inf
        self.received: int | None = None
        self.waiting: tuple[bool, bool] | None = None     # (periodic, stop) until this step's validation ends
        self.stop_at_epoch_end = False
        self.stopped_at: int | None = None                # the step saved for a stop, raised at the next hook
        self.logged_through = -1                          # the last logger step the next checkpoint covers
        self._previous: dict = {}

    @property
    def last(self) -> Path:
        return self.folder / "last.ckpt"

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.best = state["best"]

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        """What a resumed run keeps of metrics.csv: the rows up to this logger step."""
        checkpoint[LOGGED_THROUGH] = self.logged_through

    # signals
    def on_train_start(self, trainer, pl_module) -> None:
        """Installed now, after Lightning's own handlers (which would end the run without a checkpoint)."""
        self.received, self.stopped_at, self.stop_at_epoch_end = None, None, False
        try:
            self._previous = {s: signal.signal(s, self._receive) for s in SIGNALS}
        except ValueError:        # not the main thread: the run stops only when killed
            self._previous = {}

    def _receive(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt          # a second Ctrl+C: stop now, without a checkpoint
        self.received = signum

    def teardown(self, trainer, pl_module, stage: str) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _signal_on_any_rank(self, trainer) -> int:
        """The signal this rank, or another, received (0: none); every rank calls this after every step."""
        received = int(self.received or 0)
        if trainer.world_size > 1:
            received = int(trainer.strategy.reduce(torch.tensor(received, device=trainer.strategy.root_device),
                                                   reduce_op="max"))
        return received

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self._raise_if_stopped(trainer)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._raise_if_stopped(trainer)

    def _raise_if_stopped(self, trainer) -> None:
        """Raised once Lightning has logged the stopped step (and ended its epoch, if it was the last)."""
        if self.stopped_at is None:
            return
        signum = self.received
        requeued = (signum == signal.SIGUSR1 and "SLURM_JOB_ID" in os.environ and trainer.is_global_zero
                    and requeue_slurm_job())
        raise Preempted(signum, self.stopped_at, self.last, requeued)

    # saving
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if accumulating(trainer, batch_idx):
            return
        received = self._signal_on_any_rank(trainer)
        if received:
            self.received = received
        periodic, stop = self.unit == "steps" and trainer.global_step % self.every == 0, bool(received)
        if not (periodic or stop):
            return
        if self.unit == "epochs" and trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            self.stop_at_epoch_end = stop          # after the epoch's validation, schedulers and early stopping
        elif validates_after(trainer):
            self.waiting = (periodic, stop)
        else:
            self.logged_through = trainer.fit_loop.epoch_loop._batches_that_stepped
            self._save_and_maybe_stop(trainer, periodic, stop)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        periodic = self.unit == "epochs" and (trainer.current_epoch + 1) % self.every == 0
        if periodic or self.stop_at_epoch_end:
            self.logged_through = trainer.fit_loop.epoch_loop._batches_that_stepped - 1
            self._save(trainer, f"epoch{trainer.current_epoch:04d}.ckpt" if periodic else None)
        if self.stop_at_epoch_end:
            self.stopped_at, self.stop_at_epoch_end = trainer.global_step, False

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        score = trainer.callback_metrics.get("val/dsc")      # logged by rank 0 only
        improved = score is not None and float(score) > self.best
        if trainer.world_size > 1:
            improved = trainer.strategy.broadcast(improved, src=0)
        if improved:
            self.best = float(score) if score is not None else self.best
            write_checkpoint(trainer, self.folder / "best.ckpt")
        if self.waiting is not None:
            periodic, stop = self.waiting
            self.waiting = None
            self.logged_through = trainer.fit_loop.epoch_loop._batches_that_stepped
            self._save_and_maybe_stop(trainer, periodic, stop)

    def _save_and_maybe_stop(self, trainer, periodic: bool, stop: bool) -> None:
        self._save(trainer, f"step{trainer.global_step:06d}.ckpt" if periodic else None)
        if stop:
            self.stopped_at = trainer.global_step

    def _save(self, trainer, name: str | None) -> None:
        """`name` (when given) and last.ckpt, one serialisation: last.ckpt is a copy."""
        if name is None:
            write_checkpoint(trainer, self.last)
            return
        write_checkpoint(trainer, self.folder / name)
        if trainer.is_global_zero:
            write_atomically(self.last, lambda tmp: shutil.copyfile(self.folder / name, tmp))


def accumulating(trainer: L.Trainer, batch_idx: int) -> bool:
    """Whether this batch's gradients wait for the next one (trainer.accumulate_grad_batches): no
    checkpoint can hold them."""
    loop = trainer.fit_loop.epoch_loop
    return (batch_idx + 1) % trainer.accumulate_grad_batches != 0 and not loop.batch_progress.is_last_batch


def write_checkpoint(trainer: L.Trainer, path: Path) -> None:
    """trainer.save_checkpoint beside `path`, then renamed over it: a kill leaves the old file whole. The
    loggers are flushed first, so metrics.csv holds every row the checkpoint covers."""
    for logger in trainer.loggers:
        logger.save()
    partial = path.with_name(path.name + ".partial")
    try:
        trainer.save_checkpoint(partial)       # every rank takes part; rank 0 writes
    except BaseException:                      # a full disk: no half-written file left behind
        if trainer.is_global_zero:
            partial.unlink(missing_ok=True)
        raise
    if trainer.is_global_zero:
        os.replace(partial, path)
