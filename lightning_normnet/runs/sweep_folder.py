"""A sweep's folder: the state its agents and trials share on one filesystem (a machine's disk, or a
cluster's shared one), and nothing else.

    <sweep>/sweep.lock            held for moments: taking a trial, claiming a training (an O_EXCL lock
                                  file, which NFS honours; Optuna's JournalFileOpenLock)
    <sweep>/optuna.journal        the offline study (runs.sweep)
    <sweep>/trainings/<key>.json  which trial trains the settings <key>, and whether it has finished
    <sweep>/trial-*/              one ordinary run folder per trial, with trial.json and a heartbeat

A trial's process touches its heartbeat every HEARTBEAT_SECONDS. A trial or a training whose heartbeat is
older than STALE_AFTER lost its process (SIGKILL, a lost node) and is taken over.
"""
from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from optuna.storages.journal import JournalFileOpenLock

from ..io import read_document, write_text

HEARTBEAT_SECONDS = 30
STALE_AFTER = 300
TRIAL_RECORD = "trial.json"


@contextmanager
def sweep_lock(folder: Path) -> Iterator[None]:
    """The sweep's one lock, held while a trial or a training is taken (a lock left by a killed holder
    is broken after a minute)."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = JournalFileOpenLock(str(folder / "sweep"), grace_period=60)
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


@contextmanager
def heartbeat(run_dir: Path) -> Iterator[None]:
    """run_dir/heartbeat touched now and every HEARTBEAT_SECONDS until the block ends."""
    beat, stop = run_dir / "heartbeat", threading.Event()
    beat.touch()

    def touch() -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            beat.touch()

    thread = threading.Thread(target=touch, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def is_alive(run_dir: Path, stale_after: float = STALE_AFTER) -> bool:
    """Whether the process of this run folder touched its heartbeat within `stale_after` seconds."""
    try:
        return time.time() - (run_dir / "heartbeat").stat().st_mtime < stale_after
    except FileNotFoundError:
        return False


def read_record(run_dir: Path) -> dict | None:
    """A trial's trial.json (None before the trial wrote it)."""
    path = run_dir / TRIAL_RECORD
    return read_document(path, "a sweep trial's record") if path.is_file() else None


def _read_training(path: Path) -> dict | None:
    return read_document(path, "a sweep's training record") if path.is_file() else None


def write_record(run_dir: Path, record: dict) -> None:
    write_text(run_dir / TRIAL_RECORD, json.dumps(record, indent=1))


def _training_file(folder: Path, key: str) -> Path:
    return folder / "trainings" / f"{key}.json"


def claim_training(folder: Path, key: str, run_dir: Path, stale_after: float = STALE_AFTER,
                   poll_seconds: float = 10.0) -> Path | None:
    """The run folder of the finished training of `key`; or None when this trial is to train it (it
    holds the claim now). While another live trial trains it, wait."""
    path, told = _training_file(folder, key), False
    mine = os.path.relpath(run_dir, folder)
    while True:
        with sweep_lock(folder):
            record = _read_training(path)
            if record and record["status"] == "done":
                return folder / record["run"]
            if record is None or record["run"] == mine or not is_alive(folder / record["run"], stale_after):
                write_text(path, json.dumps({"run": mine, "status": "training"}))
                return None
        if not told:
            print(f"waiting for {folder / record['run']} to finish training these settings ...", flush=True)
            told = True
        time.sleep(poll_seconds)


def finish_training(folder: Path, key: str, run_dir: Path) -> None:
    write_text(_training_file(folder, key), json.dumps({"run": os.path.relpath(run_dir, folder), "status": "done"}))


def release_training(folder: Path, key: str, run_dir: Path) -> None:
    """Give up a claim this trial holds (its training failed or was stopped): the next trial trains."""
    path = _training_file(folder, key)
    with sweep_lock(folder):
        if _read_training(path) == {"run": os.path.relpath(run_dir, folder), "status": "training"}:
            path.unlink()
