"""Exact resume: a run stopped by SIGTERM and resumed ends with the weights of the run that was never
stopped (torch.equal), and its history files hold every step once, as that run's do. For NormNet (steps,
augmented slabs; stopped at a validating step; and killed leaving only an older periodic checkpoint), the 3D
supervised U-Net (epochs, TorchIO augmentation, early stopping and a plateau schedule; stopped at and inside epochs)
and the cycle-GAN (manual optimisation, image pools, a shuffled loader). Also: the W&B run id kept, the
stop's exit status and line, unfinished runs refused by compare and evaluate, a finished run not trained
again, and a run folder refused to another configuration."""
from __future__ import annotations

import csv
import os
import re
import signal
from pathlib import Path

import pytest
import torch
import wandb

from lightning_normnet.cli import main
from lightning_normnet.methods import REGISTRY
from lightning_normnet.scores import read_evaluation

from .conftest import TINY

NORMNET = ["trainer.max_steps=6", "trainer.val_check_interval=2", "trainer.checkpoint_every=2",
           "trainer.log_every_n_steps=1", "data.augmentation.mirror_probability=0.5",
           "data.augmentation.rotation_degrees=10", "data.augmentation.scaling=0.1"]
UNET = ["data.phantom.train_volumes=2", "unet3d.patch=[32,32,16]", "unet3d.channels=[4,4,8,8,16]",
        "unet3d.batches_per_epoch=3", "unet3d.batch_size=1", "unet3d.max_epochs=5", "unet3d.val_every=2",
        "unet3d.plateau_patience=0", "unet3d.min_lr=1e-12",
        "unet3d.augmentation_probability=0.5", "trainer.log_every_n_steps=1"]
CYCLEGAN = ["data.phantom.train_volumes=2", "cyclegan.stages=4", "cyclegan.base_channels=4", "cyclegan.crop=32",
            "cyclegan.epochs=3", "cyclegan.schedule_epochs=3", "cyclegan.decay_epochs=2", "cyclegan.val_every=2",
            "cyclegan.pool_size=2", "cyclegan.min_lesion_pixels=5", "cyclegan.min_lung_pixels=50",
            "trainer.limit_train_batches=3", "trainer.log_every_n_steps=1"]


@pytest.fixture(autouse=True)
def deterministic():
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return f"data.cache_dir={tmp_path_factory.mktemp('resume') / 'cache'}"


def signal_during_step(monkeypatch, method: str, step: int, signum=signal.SIGTERM) -> None:
    """The method's training_step sends `signum` to this process while it trains step `step` (0-based)."""
    module = REGISTRY[method].module
    original = module.training_step

    def training_step(self, batch, batch_idx):
        if self.trainer.global_step == step:
            os.kill(os.getpid(), signum)
        return original(self, batch, batch_idx)

    monkeypatch.setattr(module, "training_step", training_step)


def run_pair(tmp_path, monkeypatch, cache, experiment, method, settings, stop_at) -> tuple[Path, Path, int]:
    """(straight run, stopped-and-resumed run, the stop's exit status)."""
    common = [*TINY, cache, *settings]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(["train", "--run-dir", str(straight), experiment, *common, f"output_dir={tmp_path}"]) == 0
    with monkeypatch.context() as patch:
        signal_during_step(patch, method, stop_at)
        status = main(["train", "--run-dir", str(resumed), experiment, *common, f"output_dir={tmp_path}"])
    assert not read_evaluation(resumed).finished
    assert main(["train", "--run-dir", str(resumed), experiment, *common, f"output_dir={tmp_path}"]) == 0
    return straight, resumed, status


def assert_same_run(straight: Path, resumed: Path) -> None:
    saved = [torch.load(run / "checkpoints" / "last.ckpt", weights_only=False) for run in (straight, resumed)]
    assert [s["optimizer_states"][0]["param_groups"][0]["lr"] for s in saved] == \
        [saved[0]["optimizer_states"][0]["param_groups"][0]["lr"]] * 2
    weights = [s["state_dict"] for s in saved]
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key
    a, b = read_evaluation(straight), read_evaluation(resumed)
    assert [v.step for v in a.validations] == [v.step for v in b.validations]
    assert a.validations == b.validations and a.finished and b.finished
    for history in ("volumes.csv", "metrics.csv"):
        assert (straight / history).read_text() == (resumed / history).read_text(), history


def test_normnet_stopped_and_resumed_is_the_run_never_stopped(tmp_path, monkeypatch, cache, capsys):
    straight, resumed, status = run_pair(tmp_path, monkeypatch, cache, "normnet_quick", "normnet", NORMNET,
                                         stop_at=3)
    assert status == 128 + signal.SIGTERM
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("normnet train: stopped by SIGTERM at step 4; saved ") and \
        f"resume with: normnet train --run-dir {resumed} normnet_quick" in line
    assert_same_run(straight, resumed)
    steps = [v.step for v in read_evaluation(straight).validations]
    assert steps == [2, 4, 6]


def test_normnet_killed_after_a_checkpoint_resumes_from_it_with_its_history_cut_there(tmp_path, monkeypatch, cache):
    """A kill that leaves no checkpoint of its own (SIGKILL, a node lost): the run resumes from the last
    periodic one (step 2), its history files cut back to that step, and still ends as the unbroken run."""
    common = [*TINY, cache, *NORMNET, f"output_dir={tmp_path}"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert main(["train", "--run-dir", str(straight), "normnet_quick", *common]) == 0
    with monkeypatch.context() as patch:
        signal_during_step(patch, "normnet", 4)
        assert main(["train", "--run-dir", str(killed), "normnet_quick", *common]) == 128 + signal.SIGTERM
    assert [v.step for v in read_evaluation(killed).validations] == [2, 4]
    checkpoints = killed / "checkpoints"
    (checkpoints / "last.ckpt").write_bytes((checkpoints / "step000002.ckpt").read_bytes())
    assert main(["train", "--run-dir", str(killed), "normnet_quick", *common]) == 0
    assert_same_run(straight, killed)


@pytest.mark.parametrize("stop_at", [2, 4, 5], ids=["epoch-end", "mid-epoch", "validating-epoch-end"])
def test_unet3d_stopped_and_resumed_is_the_run_never_stopped(tmp_path, monkeypatch, cache, stop_at):
    """3 batches an epoch, validation every 2 epochs: stopped at the end of an epoch that does not validate,
    inside an epoch, and at the end of one that validates."""
    straight, resumed, status = run_pair(tmp_path, monkeypatch, cache, "unet3d", "unet3d", UNET, stop_at)
    assert status == 128 + signal.SIGTERM
    assert_same_run(straight, resumed)
    lr = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=False)["optimizer_states"][0]
    lr = lr["param_groups"][0]["lr"]
    assert lr < 1e-3                                 # the plateau schedule did act (patience 0)
    # ... on the training loss, as seed 004: replayed on the epochs' logged mean losses, it ends at that rate
    with open(straight / "metrics.csv", newline="") as file:
        losses = [float(row["train/epoch_loss"]) for row in csv.DictReader(file) if row["train/epoch_loss"]]
    replay = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(replay, mode="min", factor=0.1, patience=0, min_lr=1e-12)
    for loss in losses:
        plateau.step(loss)
    assert len(losses) == 5 and replay.param_groups[0]["lr"] == pytest.approx(lr)


@pytest.mark.parametrize("stop_at", [4, 8], ids=["epoch-end", "mid-epoch"])
def test_cyclegan_stopped_and_resumed_is_the_run_never_stopped(tmp_path, monkeypatch, cache, stop_at):
    """Manual optimisation (two optimiser steps a batch), a shuffled loader, image pools and a learning rate
    the module decays at each epoch's end: stopped at the end of the first epoch (batch 3 of 3) and inside
    the second (batch 2 of 3)."""
    straight, resumed, status = run_pair(tmp_path, monkeypatch, cache, "cyclegan", "cyclegan", CYCLEGAN, stop_at)
    assert status == 128 + signal.SIGTERM
    assert_same_run(straight, resumed)


def test_unfinished_runs_are_refused_and_finished_ones_not_trained_again(tmp_path, monkeypatch, cache, capsys):
    common = [*TINY, cache, *NORMNET, f"output_dir={tmp_path}"]
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        signal_during_step(patch, "normnet", 2, signal.SIGINT)
        assert main(["train", "--run-dir", str(run), "normnet_quick", *common]) == 128 + signal.SIGINT
    capsys.readouterr()
    assert main(["compare", str(run), str(run), "--output", str(tmp_path / "cmp")]) == 2
    assert f"{run}: its training stopped before its end" in capsys.readouterr().err
    last = run / "checkpoints" / "last.ckpt"
    assert main(["evaluate", "--checkpoint", str(last), f"output_dir={tmp_path}"]) == 2
    assert "its run stopped before the end of its training" in capsys.readouterr().err
    assert main(["train", "--run-dir", str(run), "normnet_quick", *common, "trainer.max_steps=8"]) == 2
    assert "holds a run of another configuration (trainer.max_steps: 6 -> 8)" in capsys.readouterr().err
    assert main(["train", "--run-dir", str(run), "normnet_quick", *common]) == 0
    assert read_evaluation(run).finished
    stamp = last.stat().st_mtime_ns
    assert main(["train", "--run-dir", str(run), "normnet_quick", *common]) == 0
    assert "finished its training already: nothing to resume" in capsys.readouterr().out
    assert last.stat().st_mtime_ns == stamp


def test_a_resumed_run_continues_its_wandb_run(tmp_path, monkeypatch, cache):
    """Offline W&B (no key): the stopped and the resumed process log under one run id, kept in the folder."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    common = [*TINY, cache, *NORMNET, f"output_dir={tmp_path}", "logging.wandb=true"]
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        signal_during_step(patch, "normnet", 2)
        assert main(["train", "--run-dir", str(run), "normnet_quick", *common]) == 128 + signal.SIGTERM
    assert main(["train", "--run-dir", str(run), "normnet_quick", *common]) == 0
    wandb.finish()        # the run's files are complete once it has ended
    kept = (run / "wandb_run_id").read_text().strip()
    runs = sorted((run / "wandb").glob("offline-run-*"))
    same_id = rf"offline-run-\d+_\d+-{kept}(-\d+)?"          # W&B adds -1 to a folder started in the same second
    assert runs and all(re.fullmatch(same_id, r.name) for r in runs), runs


def test_a_damaged_run_configuration_is_refused_in_a_sentence(tmp_path, cache, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("name: [unclosed\n")
    assert main(["train", "--run-dir", str(run), "normnet_quick", *TINY, cache, f"output_dir={tmp_path}"]) == 2
    assert f"{run / 'config.yaml'}: not valid YAML" in capsys.readouterr().err


def test_a_checkpoint_that_cannot_be_written_leaves_nothing_half_written(tmp_path):
    """A full disk during trainer.save_checkpoint: the error goes on, the partial file is removed and the
    previous checkpoint stays whole."""
    import errno
    from types import SimpleNamespace

    from callbacks.checkpointing import write_checkpoint

    def save_checkpoint(path):
        path.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    trainer = SimpleNamespace(loggers=[], is_global_zero=True, save_checkpoint=save_checkpoint)
    last = tmp_path / "last.ckpt"
    last.write_bytes(b"previous")
    with pytest.raises(OSError):
        write_checkpoint(trainer, last)
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"] and last.read_bytes() == b"previous"
