"""Shared fixtures: the real data folder (../shared/data) and a tiny, fast experiment config."""
from __future__ import annotations

from pathlib import Path

import pytest

from lightning_normnet.config import load_config

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data(relative: str) -> Path:
    """A path under ../shared/data; the test is skipped, saying why, when the folder is absent."""
    path = DATA / relative
    if not path.exists():
        pytest.skip(f"real data not available: {path} is missing")
    return path


TINY = [
    "data.phantom.healthy_volumes=2", "data.phantom.covid_volumes=2",
    "data.phantom.spacing=[4.0,4.0,6.0]", "data.phantom.size=[80,80,36]",
    "preprocessing.spacing=[4.0,4.0,6.0]", "preprocessing.in_plane_size=[64,64]",
    "data.slab=[8,64,64]", "data.batch_size=2", "data.num_workers=0",
    "lesions.length_scale=0.2", "postprocessing.k_d=3", "postprocessing.k_f=3",
    "model.members=2", "model.channels=[4,8,16]", "model.strides=[2,2]", "model.num_res_units=0",
    "inference.roi=[8,64,64]", "trainer.max_steps=2", "trainer.val_check_interval=2",
    "logging.wandb=false", "logging.overlays=1",
]


@pytest.fixture
def tiny_overrides(tmp_path) -> list[str]:
    return TINY + [f"data.cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'runs'}"]


@pytest.fixture
def tiny_config(tiny_overrides):
    return load_config("normnet_quick", tiny_overrides)


@pytest.fixture(autouse=True)
def no_launch_variable(monkeypatch):
    """The folder a run hands to the DDP ranks it launches (runs.run.LAUNCH_VARIABLE) is left to no
    later test: set then deleted through monkeypatch, the variable is removed again after every test."""
    monkeypatch.setenv("NORMNET_RUN_DIR", "unset")
    monkeypatch.delenv("NORMNET_RUN_DIR")
