"""Validation under DDP (2 CPU processes, gloo): every volume is counted exactly once.

Three volumes on two ranks: Lightning's distributed sampler pads the set to
four, so one volume is evaluated twice; the evaluation must still list three.
"""
import json
import os
import subprocess
import sys

import lightning as L
import torch
from omegaconf import OmegaConf

from callbacks.volume_evaluation import VolumeEvaluation
from datamodules.evaluation import EvaluationDataModule
from lightning_normnet.config import load_config
from lightning_normnet.models.normnet import NormNet
from lightning_normnet.scores import Evaluation


def test_each_volume_counted_once_with_two_processes(tmp_path, tiny_overrides):
    cfg = load_config("normnet_quick", tiny_overrides + ["data.phantom.covid_volumes=3"])
    datamodule = EvaluationDataModule(cfg)
    datamodule.prepare_data()
    evaluation = VolumeEvaluation(Evaluation("normnet", "ddp", True, tmp_path / "run"), overlays=0)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False,
                        callbacks=[evaluation], enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.validate(NormNet(OmegaConf.to_container(cfg)), datamodule=datamodule)
    history = json.loads((tmp_path / "run" / "evaluation.json").read_text())["validations"]
    names = [v["name"] for v in history[-1]["volumes"]]
    assert names == ["covid_000", "covid_001", "covid_002"]
    assert history[-1]["summary"]["phantom"]["dsc"][2] == 3
    rows = (tmp_path / "run" / "volumes.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 3


def test_ddp_training_from_the_command_line(tmp_path, tiny_overrides):
    """`normnet train ... trainer.strategy=ddp`: Lightning relaunches the CLI for rank 1; one run folder,
    every validation (steps 2, 4 and the final 5) lists each volume once."""
    overrides = tiny_overrides + ["data.phantom.covid_volumes=3", "trainer.max_steps=5", "trainer.accelerator=cpu",
                                  "trainer.devices=2", "trainer.strategy=ddp"]
    env = {k: v for k, v in os.environ.items() if k != "NORMNET_RUN_DIR"}
    done = subprocess.run([sys.executable, "-m", "lightning_normnet.cli", "train", "normnet_quick", *overrides],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    runs = list((tmp_path / "runs" / "normnet_quick").iterdir())
    assert len(runs) == 1
    history = json.loads((runs[0] / "evaluation.json").read_text())["validations"]
    assert [entry["step"] for entry in history] == [2, 4, 5]
    assert all([v["name"] for v in entry["volumes"]] == ["covid_000", "covid_001", "covid_002"] for entry in history)
    last = torch.load(runs[0] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 5                       # the final weights, not those of step 4
