import math

import pytest
import torch

from lightning_normnet.metrics import bright_voxel_metrics, confusion, segmentation_metrics
from lightning_normnet.scores import VolumeScore, summarize


def test_segmentation_metrics_by_hand():
    pred = torch.tensor([1, 1, 1, 0, 0, 0, 1, 0], dtype=torch.bool)
    truth = torch.tensor([1, 1, 0, 1, 0, 0, 0, 0], dtype=torch.bool)
    lung = torch.tensor([1, 1, 1, 1, 1, 1, 0, 0], dtype=torch.bool)
    assert confusion(pred, truth) == (2, 2, 1, 3)
    m = segmentation_metrics(pred, truth, lung)
    assert m["dsc"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 2))       # 0.571
    assert m["psc"] == pytest.approx(2 / 4) and m["sen"] == pytest.approx(2 / 3)
    assert m["spec"] == pytest.approx(2 / 3)                          # in the lung: tn 2 (4, 5), fp 1 (2)


def test_empty_cases_are_defined_or_nan():
    empty = torch.zeros(4, dtype=torch.bool)
    m = segmentation_metrics(empty, empty, torch.ones(4, dtype=torch.bool))
    assert m["dsc"] == 1.0 and math.isnan(m["psc"]) and math.isnan(m["sen"]) and m["spec"] == 1.0


def test_bright_voxel_metrics_by_hand():
    image = torch.tensor([0.9, 0.8, 0.5, 0.4, 0.1, 0.6])
    lung = torch.tensor([1, 1, 1, 1, 1, 0], dtype=torch.bool)
    lesion = torch.tensor([0, 1, 0, 1, 0, 0], dtype=torch.bool)   # bright lung voxels: 0..3; healthy: 0, 2
    vote = torch.tensor([1, 1, 0, 0, 1, 1], dtype=torch.bool)
    prob = torch.tensor([0.9, 0.8, 0.3, 0.1, 0.99, 0.99])
    m = bright_voxel_metrics(vote, prob, image, lung, lesion, 0.33)
    assert m["bright_precision"] == pytest.approx(1 / 2)     # voted healthy: 0 (right), 1 (lesion)
    assert m["bright_sensitivity"] == pytest.approx(1 / 2)   # healthy 0 found, 2 missed
    assert m["bright_specificity"] == pytest.approx(1 / 2)   # lesion 3 rejected, 1 not
    # AUC: healthy scores {0.9, 0.3} vs lesion {0.8, 0.1}: pairs won 0.9>0.8, 0.9>0.1, 0.3>0.1 -> 3/4
    assert m["bright_auc"] == pytest.approx(0.75)


def test_summary_is_mean_and_std_over_defined_volumes():
    records = [VolumeScore("a", "1", dsc=0.5), VolumeScore("a", "2", dsc=0.7, psc=0.4),
               VolumeScore("b", "3", dsc=0.1, psc=0.2)]
    s = summarize(records)
    assert s["a"]["dsc"][0] == pytest.approx(0.6) and s["a"]["dsc"][1] == pytest.approx(0.1)
    assert s["a"]["psc"] == (pytest.approx(0.4), 0.0, 1)
    assert s["b"]["dsc"][2] == 1 and s["b"]["sen"][2] == 0
