"""`normnet train` and `normnet prepare`: an experiment's method fitted in a new (or given) run folder;
the data an experiment reads, brought into the cache ahead of time."""
from __future__ import annotations

from pathlib import Path

import lightning as L

from ..config import ConfigError, load_config
from ..datasets import discover
from ..datasets.cache import prepare_cases
from ..io import check_output_folder
from ..methods import method_of
from .checkpoints import checkpoint_step
from .run import Run, check_trainer, finished, launched_rank, open_run_folder, removed_if_refused, resume_point


def train(experiment: str, overrides: list[str] | tuple[str, ...] = (), chosen: str | None = None) -> Path:
    """A new run; or, in a run folder (`chosen`, or a requeued SLURM job's) whose training stopped before its
    end, that run continued from its last checkpoint."""
    cfg = load_config(experiment, overrides)
    method = method_of(cfg)
    if not launched_rank():       # checked once, by the process the user started
        check_trainer(cfg)
    folder = open_run_folder(cfg, "train", chosen)
    if finished(folder):
        print(f"{folder} finished its training already: nothing to resume.")
        return folder
    with removed_if_refused(folder, cfg.output_dir, chosen):
        resume = resume_point(folder)
        if resume is not None:
            print(f"resuming {folder} from step {checkpoint_step(resume)} ({resume})")
        L.seed_everything(cfg.seed, workers=True)
        method.fit(cfg, Run(cfg, method, folder, resume))
    return folder


def prepare_experiment(experiment: str, overrides: list[str] | tuple[str, ...] = ()) -> None:
    """What the experiment's method trains on, and data.test: its datamodule's prepare_data."""
    cfg = load_config(experiment, overrides)
    method_of(cfg).datamodule(cfg).prepare_data()


def prepare_folder(scans: str, output: str | None, labelled: bool, experiment: str | None,
                   overrides: list[str] | tuple[str, ...] = ()) -> None:
    """Any folder of scans, prepared with an experiment's settings (normnet's by default)."""
    if not output:
        raise ConfigError("prepare --input needs --output <cache folder>.")
    check_output_folder(output, [scans], "cache")
    cfg = load_config(experiment or "normnet", overrides)
    role = "test" if labelled else "healthy"
    index = prepare_cases(discover("folder", scans, cfg.datasets.folder, role), output, cfg, training=not labelled)
    print(f"{len(index['cases'])} volumes prepared in {output}, {len(index['skipped'])} skipped")
