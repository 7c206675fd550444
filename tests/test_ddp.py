"""Validation under DDP (2 CPU processes, gloo): every volume is counted exactly once.

Three volumes on two ranks: Lightning's distributed sampler pads the set to
four, so one volume is evaluated twice; the evaluation must still list three.
"""
import json

import lightning as L
from omegaconf import OmegaConf

from callbacks.ensemble_evaluation import EnsembleEvaluation
from datamodules.evaluation import EvaluationDataModule
from lightning_normnet.config import load_config
from lightning_normnet.models.normnet import NormNet


def test_each_volume_counted_once_with_two_processes(tmp_path, tiny_overrides):
    cfg = load_config("normnet_quick", tiny_overrides + ["data.phantom.covid_volumes=3"])
    datamodule = EvaluationDataModule(cfg)
    datamodule.prepare_data()
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False,
                        callbacks=[EnsembleEvaluation(tmp_path / "run", overlays=0)], enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.validate(NormNet(OmegaConf.to_container(cfg)), datamodule=datamodule)
    history = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    names = [v["name"] for v in history[-1]["volumes"]]
    assert names == ["covid_000", "covid_001", "covid_002"]
    assert history[-1]["summary"]["phantom"]["dsc"][2] == 3
    rows = (tmp_path / "run" / "volumes.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 3
