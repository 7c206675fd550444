"""A run's checkpoints, and its stop on a scheduler's signal.

checkpoints/ holds one checkpoint every `every` steps or epochs (stepNNNNNN.ckpt, epochNNNN.ckpt),
last.ckpt (always the latest) and best.ckpt (the best validation DSC so far, chosen on data.test: a model
selection, not an unbiased score). Every file is written beside its place and renamed over it, so a kill
leaves the previous version whole.

A checkpoint is taken where a resumed run continues exactly: after a step's optimiser update and, when
that step validates, after its validation (Lightning would otherwise skip the validation on resuming).

SIGTERM (a scheduler's time limit), SIGUSR1 (SLURM's warning, `#SBATCH --signal=USR1@90`) and SIGINT
(Ctrl+C; a second one stops at once) end the current step, save last.ckpt there and raise `Preempted`
once Lightning has logged the step (at the next step's or the epoch's end hook): the run exits with
128 + the signal's number and one line saying how to resume. Under SLURM, SIGUSR1 also
requeues the job, which then resumes in the same run folder. All ranks stop at the same step: the wish to
stop is reduced across ranks after every step.
"""
from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
from pathlib import Path

import lightning as L

SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


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
    """Whether the step just trained is followed by a validation (Lightning's own rule, which it keeps
    private)."""
    loop = trainer.fit_loop
    return loop.epoch_loop._should_check_val_fx(loop._data_fetcher)


class RunCheckpoints(L.Callback):
    def __init__(self, folder: Path, every: int, unit: str):
        """`every` steps (unit "steps") or epochs (unit "epochs")."""
        self.folder, self.every, self.unit = Path(folder), every, unit
        self.best = -math.inf
        self.received: int | None = None
        self.waiting: tuple[bool, bool] | None = None     # (periodic, stop) until this step's validation ends
        self.stopped_at: int | None = None                # the step saved for a stop, raised at the next hook
        self._previous: dict = {}

    @property
    def last(self) -> Path:
        return self.folder / "last.ckpt"

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.best = state["best"]

    # signals
    def on_train_start(self, trainer, pl_module) -> None:
        """Installed now, after Lightning's own handlers (which would end the run without a checkpoint)."""
        self.received, self.stopped_at = None, None
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

    def _stop_wished(self, trainer) -> bool:
        wished = self.received is not None
        return trainer.strategy.reduce_boolean_decision(wished, all=False) if trainer.world_size > 1 else wished

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self._raise_if_stopped(trainer)

    def _raise_if_stopped(self, trainer) -> None:
        if self.stopped_at is None:
            return
        signum = self.received or signal.SIGTERM     # another rank's signal
        requeued = (signum == signal.SIGUSR1 and "SLURM_JOB_ID" in os.environ and trainer.is_global_zero
                    and requeue_slurm_job())
        raise Preempted(signum, self.stopped_at, self.last, requeued)

    # saving
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        periodic = self.unit == "steps" and trainer.global_step % self.every == 0
        stop = self._stop_wished(trainer)
        if not (periodic or stop):
            return
        if validates_after(trainer):
            self.waiting = (periodic, stop)
            return
        self._save_and_maybe_stop(trainer, periodic, stop)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._raise_if_stopped(trainer)
        if self.unit == "epochs" and (trainer.current_epoch + 1) % self.every == 0:
            self._save(trainer, f"epoch{trainer.current_epoch:04d}.ckpt")

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
            partial = self.last.with_name("last.ckpt.partial")
            shutil.copyfile(self.folder / name, partial)
            os.replace(partial, self.last)



def write_checkpoint(trainer: L.Trainer, path: Path) -> None:
    """trainer.save_checkpoint beside `path`, then renamed over it: a kill leaves the old file whole."""
    partial = path.with_name(path.name + ".partial")
    trainer.save_checkpoint(partial)       # every rank takes part; rank 0 writes
    if trainer.is_global_zero:
        os.replace(partial, path)
