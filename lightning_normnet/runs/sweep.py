"""`normnet sweep SWEEP.yaml [--count N]`: an agent of a sweep. With a W&B key, W&B's own agent (the sweep
is created once; its id is kept in the sweep's folder for the other agents). Without one, the same file on
Optuna, the study in a journal file in the sweep's folder that every agent shares: the processes of a
multi-GPU machine, or the tasks of a SLURM job array on a shared filesystem.

Offline, exactly once: a grid is queued whole when the study is created, and agents take queued trials
only under the sweep's lock, so no two take the same one; random and bayes trials are sampled under it.
Each trial is the file's command (`normnet trial`) in a child process, in <sweep>/trial-NNNN. A trial that
exits non-zero is failed and the sweep goes on. One whose agent is stopped (SIGTERM, SIGINT) is failed and
its parameters are queued again; one whose agent vanished (SIGKILL, a lost node) is found by its stale
heartbeat and queued again, or recorded as complete if its folder says it finished. Running the command
again continues the study; when nothing is left it says so, and writes the tables.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import TrialState

from ..config import ConfigError, load_config
from ..io import write_text
from . import sweep_folder as shared
from .run import wandb_online
from .sweep_file import EXPERIMENT, Sweep, read_sweep

QUEUED = "queued_grid"         # study attribute: the grid the study was created with (queued once)
RETRY_OF = "retry_of"          # trial attribute: the number of the stopped trial it runs again
STOPPED_CODES = (-signal.SIGTERM, -signal.SIGINT, 128 + signal.SIGTERM, 128 + signal.SIGINT)


class Stopped(Exception):
    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stop(signum, _frame) -> None:
    raise Stopped(signum)


def open_study(sweep: Sweep, folder: Path) -> optuna.Study:
    """The sweep's study in <sweep>/optuna.journal, created (a grid queued whole) by the first agent."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folder.mkdir(parents=True, exist_ok=True)
    journal = str(folder / "optuna.journal")
    storage = JournalStorage(JournalFileBackend(journal, lock_obj=JournalFileOpenLock(journal)))
    with shared.sweep_lock(folder):
        study = optuna.create_study(study_name=sweep.name, storage=storage, sampler=sweep.sampler(),
                                    direction=sweep.goal, load_if_exists=True)
        if sweep.method == "grid":
            grid = [sorted((k, repr(v)) for k, v in point.items()) for point in sweep.grid()]
            if QUEUED not in study.user_attrs:
                for point in sweep.grid():
                    study.enqueue_trial(point)
                study.set_user_attr(QUEUED, grid)
            elif study.user_attrs[QUEUED] != [[list(p) for p in point] for point in grid]:
                raise ConfigError(f"{sweep.path}: its grid changed since the study in {folder} was created; "
                                  "give the sweep a new name to start another.")
    return study


def _requeue(study: optuna.Study, trial: optuna.trial.FrozenTrial | optuna.Trial) -> None:
    """The trial's parameters queued again, marked as a retry of it. Called under the sweep's lock."""
    study.enqueue_trial(trial.params, user_attrs={RETRY_OF: trial.number})


def _fail_and_requeue(study: optuna.Study, trial: optuna.Trial, folder: Path) -> None:
    """A stopped trial: failed and queued again, unless another agent recorded it meanwhile."""
    with shared.sweep_lock(folder):
        if study.get_trials(deepcopy=False)[trial.number].state == TrialState.RUNNING:
            study.tell(trial, state=TrialState.FAIL)
            _requeue(study, trial)


def _run_folder(folder: Path, trial: optuna.trial.FrozenTrial | optuna.Trial) -> Path:
    return folder / f"trial-{trial.number:04d}"


def recover_lost(study: optuna.Study, folder: Path, metric: str, stale_after: float) -> None:
    """RUNNING trials whose process is gone: complete if their folder says they finished, else failed and
    queued again. Called under the sweep's lock."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        run_dir = _run_folder(folder, trial)
        started = trial.datetime_start.timestamp() if trial.datetime_start else time.time()
        if shared.is_alive(run_dir, stale_after) or time.time() - started <= stale_after:
            continue
        record = shared.read_record(run_dir) or {}
        value = record.get("metrics", {}).get(metric) if record.get("status") == "finished" else None
        if value is not None:
            study.tell(trial.number, value)
        else:
            study.tell(trial.number, state=TrialState.FAIL)
            _requeue(study, trial)
            print(f"trial {trial.number} lost its process (no heartbeat in {run_dir}): queued again", flush=True)


def take_trial(study: optuna.Study, sweep: Sweep, folder: Path, stale_after: float) -> optuna.Trial | None:
    """The next trial for this agent, or None when none is left to start."""
    with shared.sweep_lock(folder):
        recover_lost(study, folder, sweep.metric, stale_after)
        trials = study.get_trials(deepcopy=False)
        if not any(t.state == TrialState.WAITING for t in trials):
            counted = [t for t in trials if t.state != TrialState.FAIL]
            if sweep.method == "grid" or (sweep.run_cap is not None and len(counted) >= sweep.run_cap):
                return None
        return study.ask(dict(sweep.space))


def _silent_elsewhere(study: optuna.Study, folder: Path) -> bool:
    """Whether a trial of another agent has missed two heartbeats: it may be lost, so wait and see
    (recover_lost takes it once STALE_AFTER has passed) before leaving the sweep."""
    quiet = 2 * shared.HEARTBEAT_SECONDS
    return any(not shared.is_alive(_run_folder(folder, t), quiet) and t.datetime_start is not None
               and time.time() - t.datetime_start.timestamp() > quiet
               for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def _environment() -> dict[str, str]:
    """This environment, with its scripts (`normnet`) first on the PATH, as the sweep's command needs."""
    scripts = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": scripts + os.pathsep + os.environ.get("PATH", "")}


def run_one(study: optuna.Study, trial: optuna.Trial, sweep: Sweep, folder: Path) -> bool:
    """The trial's command in a child process (a session of its own, so a stop reaches all its processes,
    DDP ranks too); its result told to the study. False if it failed or was stopped."""
    run_dir = _run_folder(folder, trial)
    run_dir.mkdir(parents=True, exist_ok=True)
    command = sweep.command_line(trial.params) + ["--run-dir", str(run_dir)]
    print(f"\n=== trial {trial.number}: {' '.join(sweep.arguments(trial.params))}", flush=True)
    child = subprocess.Popen(command, env=_environment(), start_new_session=True)
    try:
        code = child.wait()
    except Stopped:
        _fail_and_requeue(study, trial, folder)       # first: a scheduler may kill this agent soon
        os.killpg(child.pid, signal.SIGTERM)
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
        raise
    if code in STOPPED_CODES:                          # the signal reached the trial first
        _fail_and_requeue(study, trial, folder)
        print(f"=== trial {trial.number} was stopped (exit {code}): queued again", flush=True)
        return False
    record = shared.read_record(run_dir) or {}
    value = record.get("metrics", {}).get(sweep.metric) if code == 0 else None
    with shared.sweep_lock(folder):     # (an agent that took it for lost may have recorded it already)
        study.tell(trial, value, state=TrialState.COMPLETE if value is not None else TrialState.FAIL,
                   skip_if_finished=True)
    if value is None:
        why = f"exit {code}" if code else f"no {sweep.metric} in {run_dir / shared.TRIAL_RECORD}"
        print(f"=== trial {trial.number} failed ({why}); the sweep goes on", flush=True)
        return False
    print(f"=== trial {trial.number}: {sweep.metric} = {value:.4f}", flush=True)
    return True


def run_offline(sweep: Sweep, folder: Path, count: int | None, stale_after: float = shared.STALE_AFTER) -> None:
    study = open_study(sweep, folder)
    write_text(folder / "sweep.yaml", sweep.path.read_text())
    ran = 0
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while count is None or ran < count:
            trial = take_trial(study, sweep, folder, stale_after)
            if trial is None and _silent_elsewhere(study, folder):
                time.sleep(shared.HEARTBEAT_SECONDS)
                continue
            if trial is None:
                break
            run_one(study, trial, sweep, folder)
            ran += 1
    except Stopped as stop:
        print(f"\nsweep {sweep.name} stopped by {stop}; its trial was queued again. Run the same command "
              "to continue.", file=sys.stderr)
        raise SystemExit(128 + stop.signum) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    states = [t.state for t in study.get_trials(deepcopy=False)]
    done, failed = states.count(TrialState.COMPLETE), states.count(TrialState.FAIL)
    busy = states.count(TrialState.RUNNING) + states.count(TrialState.WAITING)
    if ran == 0 and not busy:
        print(f"sweep {sweep.name}: nothing left to do ({done} trials finished, {failed} failed).")
    else:
        print(f"sweep {sweep.name}: {ran} trials run here; {done} finished, {failed} failed, {busy} running or "
              "waiting in all.")


def run_wandb(sweep: Sweep, folder: Path, count: int | None) -> None:
    """W&B's agent on the W&B sweep of this file, created by the first agent (its id in the sweep folder)."""
    import wandb

    project = load_config(str(sweep.constants[EXPERIMENT])).logging.project
    id_file = folder / "wandb_sweep_id"
    with shared.sweep_lock(folder):
        if id_file.is_file():
            sweep_id = id_file.read_text().strip()
        else:
            sweep_id = wandb.sweep(sweep.raw, project=project)
            write_text(id_file, sweep_id + "\n")
            write_text(folder / "sweep.yaml", sweep.path.read_text())
    path = os.environ.get("PATH", "")
    os.environ["PATH"] = _environment()["PATH"]      # W&B's agent starts `normnet trial` from os.environ
    try:
        wandb.agent(sweep_id, project=project, count=count)
    finally:
        os.environ["PATH"] = path


def sweep(path: str | Path, count: int | None = None) -> Path:
    """Run trials of the sweep file at `path` until none is left (or `count` ran here), then its tables."""
    from .ablations import finished_trials, write_tables

    spec = read_sweep(path)
    folder = spec.folder()
    if wandb_online():
        run_wandb(spec, folder, count)
    else:
        run_offline(spec, folder, count)
    if finished_trials(folder):
        write_tables(folder)
    else:
        print(f"sweep {spec.name}: no finished trial yet, so no tables.")
    return folder
