"""A run: its folder, its configuration, its method, and the Lightning Trainer every method shares
(loggers, progress, devices, the evaluation of data.test, the datasets' summary).

runs/<name>/<kind>-<time>/ holds config.yaml, the logs, evaluation files and checkpoints. All ranks of a
run write into one folder: SLURM tasks share the job id; ranks that Lightning launches for DDP inherit
the folder their parent chose through LAUNCH_VARIABLE, the one thing handed across that process boundary
(as Lightning hands over LOCAL_RANK); within a process the folder is always passed as an argument.
"""
from __future__ import annotations

import csv
import inspect
import logging
import os
import secrets
import shutil
import time
import warnings
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import wandb
from lightning.pytorch.callbacks import Checkpoint, RichProgressBar
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf

from callbacks.checkpointing import write_checkpoint
from callbacks.dataset_summary import DatasetSummary
from callbacks.step_randomness import StepRandomness
from callbacks.volume_evaluation import VolumeEvaluation

from ..config import SCHEDULE_KEYS, ConfigError, did_you_mean, differences
from ..methods import Method
from ..io import InputError, read_document, write_text
from ..scores import EVALUATION, Evaluation, read_evaluation
from .checkpoints import checkpoint_step, logged_through

LAUNCH_VARIABLE = "NORMNET_RUN_DIR"
# the run folder is ours and holds config.yaml before any logger starts: nothing of a logger's is deleted
warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")


# Trainer arguments the run and the methods' schedules set themselves
RUN_OWNED = ("logger", "callbacks", "default_root_dir", "enable_progress_bar", "enable_checkpointing", "max_epochs",
             "check_val_every_n_epoch", "reload_dataloaders_every_n_epochs")


def trainer_settings(cfg: DictConfig) -> dict:
    """trainer.* as Lightning Trainer arguments: every key but the step schedule's."""
    return {k: v for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items() if k not in SCHEDULE_KEYS}


def check_trainer(cfg: DictConfig) -> None:
    """trainer.* against Lightning's own Trainer, before anything is written: a key that is not one of its
    arguments is refused naming the nearest one, and values it would refuse are refused now."""
    accepted = [p for p in inspect.signature(L.Trainer.__init__).parameters if p != "self"]
    for key in cfg.trainer:
        if key in RUN_OWNED:
            raise ConfigError(f"trainer.{key} is set by the run itself (its loggers, callbacks, folder, and the "
                              "epochs of the baselines, which their own groups hold).")
        if key not in accepted and key not in SCHEDULE_KEYS:
            raise ConfigError(f"trainer.{key} is not a Lightning Trainer argument"
                              f"{did_you_mean(f'trainer.{key}', [f'trainer.{a}' for a in accepted])}")
    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    lightning_log.setLevel(logging.WARNING)        # no "GPU available" lines for a dry construction
    try:       # Lightning's checks of the values (precision, accelerator, devices, strategy, ...)
        L.Trainer(**trainer_settings(cfg), logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False)
    except (ValueError, TypeError, MisconfigurationException, RuntimeError, ImportError) as err:
        raise ConfigError(f"trainer settings refused by Lightning: {str(err).splitlines()[0]}") from None
    finally:
        lightning_log.setLevel(level)


def launched_rank() -> bool:
    """Whether this process is a DDP rank that Lightning launched from a run (it joins that run's folder)."""
    return os.environ.get("LOCAL_RANK", "0") != "0" and bool(os.environ.get(LAUNCH_VARIABLE))


def open_run_folder(cfg: DictConfig, kind: str, chosen: str | Path | None = None, name: str | None = None) -> Path:
    """runs/<name>/<kind>-<time> (or `chosen`, to continue in a given folder), created, with config.yaml. A
    folder that holds a configuration already continues only with that same configuration."""
    if launched_rank():
        return Path(os.environ[LAUNCH_VARIABLE])
    if chosen:
        run_dir = Path(chosen)
    elif "SLURM_JOB_ID" in os.environ:     # every task of the job, and the job requeued, write into one folder
        run_dir = Path(cfg.output_dir) / (name or cfg.name) / f"{kind}-{os.environ['SLURM_JOB_ID']}"
    else:
        run_dir = new_folder(Path(cfg.output_dir) / (name or cfg.name), kind)
    saved = run_dir / "config.yaml"
    if saved.is_file():
        changed = differences(OmegaConf.create(read_document(saved, "a run's configuration") or {}), cfg)
        if changed:
            raise ConfigError(f"{run_dir} holds a run of another configuration ({'; '.join(changed[:3])}"
                              f"{'; ...' if len(changed) > 3 else ''}): continue it with the configuration in "
                              f"{saved}, or choose another folder.")
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(saved, OmegaConf.to_yaml(cfg))      # whole or not at all: other tasks may be reading it
    os.environ[LAUNCH_VARIABLE] = str(run_dir)      # read only by the ranks Lightning launches from here
    return run_dir


@contextmanager
def removed_if_refused(folder: Path, output_dir: str | Path, chosen: str | Path | None = None):
    """A run folder this command made (not one the user chose) is removed again, with the folders above it
    that it leaves empty (below output_dir), when the command is refused (bad input or setting) before any
    checkpoint was saved: a refused command leaves no run behind."""
    fresh = chosen is None and {p.name for p in folder.iterdir()} <= {"config.yaml"}
    try:
        yield folder
    except (InputError, ConfigError):
        if fresh and not launched_rank() and not any(folder.rglob("*.ckpt")):
            shutil.rmtree(folder, ignore_errors=True)
            stop = Path(output_dir).resolve()
            with suppress(OSError):          # another run may be filling a parent at this moment
                for parent in folder.resolve().parents:
                    if stop not in parent.parents or any(parent.iterdir()):
                        break
                    parent.rmdir()
        raise


def resume_point(folder: Path) -> Path | None:
    """checkpoints/last.ckpt of a run folder whose training stopped before its end; None for a run not yet
    checkpointed (it starts at step 0) or a finished one."""
    last = folder / "checkpoints" / "last.ckpt"
    return last if last.is_file() and not finished(folder) else None


def finished(folder: Path) -> bool:
    """Whether a run folder's training ran to its end (its evaluation.json says so)."""
    return (folder / EVALUATION).is_file() and read_evaluation(folder).finished


def new_folder(parent: Path, prefix: str) -> Path:
    """parent/<prefix>-<time>, created; folders started in the same second get -2, -3, ..."""
    stamp = f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        folder = parent / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise FileExistsError(f"{parent}: 999 folders named {stamp}-*: choose a run folder with --run-dir.")


def use_offline_wandb_unless_keyed() -> None:
    """Nothing reaches the network unless the user gave W&B a key (or chose a mode)."""
    if not os.environ.get("WANDB_API_KEY") and "WANDB_MODE" not in os.environ:
        os.environ["WANDB_MODE"] = "offline"


def wandb_online() -> bool:
    """Whether W&B is to be reached: a key is set (WANDB_API_KEY) and WANDB_MODE is not offline or disabled."""
    return bool(os.environ.get("WANDB_API_KEY")) and os.environ.get("WANDB_MODE") not in ("offline", "disabled")


@dataclass
class Run:
    """`resume`: the checkpoint an interrupted run continues from (runs.resume); its history files keep
    what was logged up to that checkpoint's step and go on from there."""
    cfg: DictConfig
    method: Method
    dir: Path
    resume: Path | None = None
    _evaluation: Evaluation | None = field(default=None, init=False, repr=False)

    @property
    def evaluation(self) -> Evaluation:
        """The run's evaluation files: started anew, or, resumed, the validations up to the checkpoint."""
        if self._evaluation is None:
            self._evaluation = Evaluation(self.method.name, self.cfg.name, self.method.label_free, self.dir)
            if self.resume is not None and (self.dir / EVALUATION).is_file():
                step = checkpoint_step(self.resume)
                self._evaluation.validations = [v for v in read_evaluation(self.dir).validations if v.step <= step]
        return self._evaluation

    def trainer(self, callbacks: list | None = None, evaluate: bool = True, training: bool = True,
                **options) -> L.Trainer:
        """The Trainer of this run. With `evaluate`: loggers (CSV, W&B), the scoring of data.test and the
        datasets' summary (listing the training sets too when `training`); without: a quiet fit with no
        validation (Semi-Inf-Net's rounds). Every evaluating Trainer of a run appends to the run's one
        `evaluation`."""
        cfg = self.cfg
        loggers, extra = False, list(callbacks or []) + [StepRandomness(cfg.seed)]
        if evaluate:
            loggers = [self._csv_logger()]
            if cfg.logging.wandb:
                use_offline_wandb_unless_keyed()
                if wandb.run is not None:     # an earlier run of this process (cv folds): ended, not joined
                    wandb.finish()
                loggers.append(WandbLogger(project=cfg.logging.project, name=f"{cfg.name}-{self.dir.name}",
                                           group=cfg.logging.group, save_dir=str(self.dir),
                                           config=OmegaConf.to_container(cfg),
                                           tags=[cfg.ablation] if cfg.ablation else None,
                                           id=wandb_run_id(self.dir) if rank_zero_only.rank == 0 else None,
                                           resume="allow"))
            extra += [DatasetSummary(self.dir, cfg, self._sources(training)),
                      VolumeEvaluation(self.evaluation, cfg.logging.overlays)]
        else:
            options.setdefault("limit_val_batches", 0)
        settings = {**trainer_settings(cfg), "logger": loggers, "callbacks": extra + [RichProgressBar()],
                    "default_root_dir": str(self.dir), **options,
                    "enable_checkpointing": any(isinstance(c, Checkpoint) for c in extra)}   # none of Lightning's
        if "SLURM_JOB_ID" in os.environ and "plugins" not in settings:   # our handlers stop and requeue, not its
            settings["plugins"] = [SLURMEnvironment(auto_requeue=False)]
        return L.Trainer(**settings)

    def _csv_logger(self) -> CSVLogger:
        """metrics.csv; resumed, with the rows logged before the checkpoint's step written back at once
        (Lightning's CSV logger deletes the file it finds)."""
        logger = CSVLogger(save_dir=str(self.dir), name="", version="")
        metrics = self.dir / "metrics.csv"
        if self.resume is None or not metrics.is_file() or rank_zero_only.rank != 0:
            return logger
        through = logged_through(self.resume)
        with open(metrics, newline="") as file:
            kept = [row for row in csv.DictReader(file) if int(row["step"]) <= through]
        writer = logger.experiment
        writer.metrics = kept
        writer.save()
        return logger

    def _sources(self, training: bool) -> list[tuple[str, str]]:
        """The (role, dataset) pairs this run reads: the method's training sets, then data.test."""
        roles = self.method.training_data if training else ()
        sources = [("healthy", self.cfg.data.healthy)] if "healthy" in roles else []
        sources += [("train", name) for name in self.cfg.data.train] if "train" in roles else []
        return sources + [("test", name) for name in self.cfg.data.test]

    def finish(self, trainer: L.Trainer) -> Path:
        """checkpoints/last.ckpt: the final weights, whatever the interval; the run recorded as finished."""
        last = self.dir / "checkpoints" / "last.ckpt"
        last.parent.mkdir(parents=True, exist_ok=True)
        write_checkpoint(trainer, last)
        if trainer.is_global_zero:
            self.evaluation.mark_finished()
            print(f"run folder: {self.dir}\ncheckpoint: {last}")
        return last


def wandb_run_id(folder: Path) -> str:
    """The W&B run id of a run folder, made once and kept in it, so that a resumed run continues its W&B
    run instead of starting another."""
    path = folder / "wandb_run_id"
    if not path.is_file():
        write_text(path, secrets.token_hex(8))
    return path.read_text().strip()
