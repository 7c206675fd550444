"""`normnet trial SWEEP.yaml [--run-dir DIR] key=value ...`: one trial of a sweep, the command its agents
run (W&B's agent, or `normnet sweep` offline). The trial is an ordinary run folder in the sweep's folder,
with trial.json beside: its arguments, the training it used, its state and its logged metrics.

No needless training: a trial's settings, less its names and logging and the keys that only change how
a trained model predicts (the method's `inference_keys`), make its training key. The first trial of a
key trains; the others evaluate that training's checkpoint with their own inference settings, waiting
while it trains. `checkpoint_step=S` scores the checkpoint saved at
step S instead of the last (Table V); `inference.member=m` scores member m alone.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path

import lightning as L
from omegaconf import DictConfig, OmegaConf

from ..config import ConfigError, load_config
from ..methods import Method, method_of
from ..methods.fitting import as_dict
from ..scores import logged_metrics, read_evaluation
from . import sweep_folder as shared
from .run import Run, check_trainer, launched_rank, new_folder, open_run_folder, resume_point
from .sweep_file import CHECKPOINT_STEP, Sweep, read_sweep, split_arguments

# how a run is named and logged: no method's weights depend on it
NAMING = ("name", "ablation", "output_dir", "logging")


def _without(cfg: DictConfig, keys: tuple[str, ...]) -> dict:
    settings = OmegaConf.to_container(cfg, resolve=True)
    for key in keys:
        *parents, last = key.split(".")
        group = settings
        for part in parents:
            group = group.get(part, {})
        group.pop(last, None)
    return settings


def training_key(cfg: DictConfig, method: Method) -> str:
    """What the weights depend on, hashed: equal for trials that differ only in inference settings."""
    settings = _without(cfg, NAMING + method.inference_keys)
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def _checkpoint(training: Path, cfg: DictConfig, step: int | None) -> Path:
    """The training's checkpoint of `step`: last.ckpt for the last step (or none named)."""
    last = step is None or step == cfg.trainer.max_steps
    return training / "checkpoints" / ("last.ckpt" if last else f"step{step:06d}.ckpt")


def _check_step(sweep: Sweep, cfg: DictConfig, step: int | None) -> None:
    """A step the training both validates and saves (or its last)."""
    t = cfg.trainer
    every = t.checkpoint_every or t.val_check_interval
    if step is not None and not (0 < step <= t.max_steps and (step == t.max_steps or
                                                               step % t.val_check_interval == step % every == 0)):
        raise ConfigError(f"{sweep.path}: {CHECKPOINT_STEP}={step} is not a step the training validates and saves "
                          f"(every trainer.val_check_interval={t.val_check_interval} and trainer.checkpoint_every="
                          f"{every} up to trainer.max_steps={t.max_steps}).")


def _stop_on_sigterm(signum, _frame) -> None:
    """A scheduler's SIGTERM ends the trial as a failure (Lightning alone would stop the fit quietly and
    the half-trained weights would pass for the training)."""
    raise SystemExit(128 + signum)


def _is_default(sweep: Sweep, experiment: str, cfg: DictConfig, step: int | None) -> bool:
    """Whether the trial runs the experiment with the sweep's constants alone: the tables' reference."""
    reference = load_config(experiment, split_arguments(sweep, sweep.arguments({}))[2])
    return _without(cfg, NAMING) == _without(reference, NAMING) and step in (None, cfg.trainer.max_steps)


def run_trial(sweep_path: str | Path, arguments: list[str], run_dir: str | Path | None = None,
              stale_after: float = shared.STALE_AFTER) -> Path:
    """Train (or reuse the training of) one trial's settings and score them; returns its run folder."""
    sweep = read_sweep(sweep_path)
    experiment, step, overrides = split_arguments(sweep, arguments)
    cfg = load_config(experiment, overrides + [f"logging.group={sweep.name}"])
    method = method_of(cfg)
    _check_step(sweep, cfg, step)
    if not launched_rank():
        check_trainer(cfg)
    folder, key = sweep.folder(), training_key(cfg, method)
    if launched_rank():       # a DDP rank Lightning launched: do as the trial's first rank planned
        trial_dir = open_run_folder(cfg, "trial")
        run = Run(cfg, method, trial_dir, resume_point(trial_dir))
        plan = shared.read_record(run.dir)
        _train(run) if plan["trains_here"] else _evaluate(run, Path(plan["checkpoint"]))
        return run.dir
    trial_dir = open_run_folder(cfg, "trial", Path(run_dir) if run_dir else new_folder(folder, "trial"))
    run = Run(cfg, method, trial_dir, resume_point(trial_dir))    # a trial stopped mid-training goes on
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        _run_planned(run, sweep, folder, experiment, arguments, step, key, stale_after)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return run.dir


def _run_planned(run: Run, sweep: Sweep, folder: Path, experiment: str, arguments: list[str], step: int | None,
                 key: str, stale_after: float) -> None:
    """Claim the training of `key` or wait for it, train or evaluate, and keep trial.json up to date."""
    cfg = run.cfg
    swept = dict(a.split("=", 1) for a in arguments if a.split("=", 1)[0] in sweep.space)
    record = {"sweep": sweep.name, "experiment": experiment, "arguments": list(arguments), "parameters": swept,
              CHECKPOINT_STEP: step, "training_key": key, "status": "running",
              "default": _is_default(sweep, experiment, cfg, step)}
    with shared.heartbeat(run.dir):
        shared.write_record(run.dir, record)
        training = shared.claim_training(folder, key, run.dir, stale_after)
        if training is None:
            record.update(trains_here=True, trained_in=os.path.relpath(run.dir, folder),
                          checkpoint=str(_checkpoint(run.dir, cfg, step)))
            shared.write_record(run.dir, record)
            try:
                _train(run)
            except BaseException:
                shared.release_training(folder, key, run.dir)
                raise
            shared.finish_training(folder, key, run.dir)
            validation = _validation_at(run.dir, step)
        else:
            checkpoint = _checkpoint(training, cfg, step)
            if not checkpoint.is_file():
                raise ConfigError(f"{checkpoint}: the training saved no checkpoint at step {step}.")
            record.update(trains_here=False, trained_in=os.path.relpath(training, folder), checkpoint=str(checkpoint))
            shared.write_record(run.dir, record)
            _evaluate(run, checkpoint)
            validation = read_evaluation(run.dir).last
        record.update(status="finished", validation_step=validation.step if step is None else step,
                      metrics=logged_metrics(validation.volumes))
        shared.write_record(run.dir, record)
    source = "trained here" if training is None else f"weights of {record['trained_in']}"
    print(f"trial {run.dir.name}: {sweep.metric} = {record['metrics'].get(sweep.metric)} ({source})")


def _train(run: Run) -> None:
    L.seed_everything(run.cfg.seed, workers=True)
    run.method.fit(run.cfg, run)


def _evaluate(run: Run, checkpoint: Path) -> None:
    """The checkpoint's weights under this trial's settings (they differ only in inference keys)."""
    model = run.method.module.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=False,
                                                   config=as_dict(run.cfg))
    trainer = run.trainer(training=False)
    trainer.validate(model, datamodule=run.method.evaluation_data(run.cfg))
    if trainer.is_global_zero:
        run.evaluation.mark_finished()


def _validation_at(run_dir: Path, step: int | None):
    """The validation of this trial: at its checkpoint step, else the last."""
    evaluation = read_evaluation(run_dir)
    if step is None:
        return evaluation.last
    for validation in evaluation.validations:
        if validation.step == step:
            return validation
    raise ConfigError(f"{run_dir}: no validation at step {step} (validations at "
                      f"{[v.step for v in evaluation.validations]}).")
