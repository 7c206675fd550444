"""Scoring on the scan's own grid, the naive threshold method, and the core's independence of Lightning."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy import ndimage

from lightning_normnet.cli import main
from lightning_normnet.config import load_config
from lightning_normnet.models.threshold import ThresholdModel, hu_to_window
from lightning_normnet.postprocessing import opening
from lightning_normnet.scores import read_evaluation


def test_opening_equals_scipys():
    rng = np.random.default_rng(0)
    mask = ndimage.binary_dilation(rng.random((10, 24, 24)) > 0.93, iterations=1) | (rng.random((10, 24, 24)) > 0.97)
    ball = ndimage.generate_binary_structure(3, 1)
    expected = ndimage.binary_opening(mask, structure=ball)
    assert 0 < expected.sum() < mask.sum()                                  # it removes some voxels, not all
    np.testing.assert_array_equal(opening(torch.from_numpy(mask), 1).numpy(), expected)


def test_threshold_by_hand():
    """Window [-800, 100]: -700 HU is 1/9 and -200 HU is 2/3 of it. Voxels at -750, -650, -300, -150 HU in
    the lung and -300 HU outside: only -650 and -300 in the lung lie strictly inside the band."""
    assert hu_to_window(-700, [-800, 100]) == pytest.approx(1 / 9)
    cfg = load_config("threshold", ["threshold.opening_radius=0"])
    model = ThresholdModel(dict(cfg))
    hu = torch.tensor([-750.0, -650.0, -300.0, -150.0, -300.0])
    lung = torch.tensor([True, True, True, True, False])
    image = (hu + 800) / 900 * lung
    lesion = model.predict_volume(image.view(1, 1, 1, 1, 5), lung.view(1, 1, 1, 1, 5)).lesion.flatten()
    assert lesion.tolist() == [False, True, True, False, False]


def test_scores_are_counted_on_the_scans_own_grid(tmp_path, tiny_overrides):
    """The threshold method on the phantom's own 4 x 4 x 6 mm grid and on a 2 x 2 x 3 mm grid: back on the
    scan's grid both masks are the same (each voxel of the scan is a voxel of both grids), so every score is
    the same, although the two grids hold 8x apart in voxels. Scored on the model grids, with the truth
    resampled, they would differ."""
    common = tiny_overrides + ["threshold.opening_radius=0"]
    finer = ["preprocessing.spacing=[2.0,2.0,3.0]", "preprocessing.in_plane_size=[128,128]", "data.slab=[8,128,128]",
             "output_dir=" + str(tmp_path / "fine")]
    assert main(["train", "threshold", *common]) == 0
    assert main(["train", "threshold", *common, *finer]) == 0
    coarse, fine = (read_evaluation(next((tmp_path / d / "threshold").glob("train-*"))).last.volumes
                    for d in ("runs", "fine"))
    assert [s.name for s in coarse] == [s.name for s in fine] == ["covid_000", "covid_001"]
    for a, b in zip(coarse, fine):
        assert 0 < a.dsc < 1 and (a.dsc, a.psc, a.sen, a.spec) == (b.dsc, b.psc, b.sen, b.spec)
    cases = sorted((tmp_path / "cache").glob("*mm/test-phantom-*/covid_000/meta.json"))
    meta = [json.loads(p.read_text()) for p in cases]
    assert len(meta) == 2 and meta[0]["grid"]["original"] == meta[1]["grid"]["original"]
    assert {tuple(m["grid"]["model"]["spacing"]) for m in meta} == {(2.0, 2.0, 3.0), (4.0, 4.0, 6.0)}


def test_the_core_imports_nothing_above_it():
    """The papers' equations, IO, preprocessing, lung masks, datasets and metrics import no Lightning module,
    datamodule, callback, method, run or command-line code."""
    core = ["config", "io", "preprocessing", "lungmask", "phantom", "lesions", "targets", "postprocessing",
            "inference", "metrics", "scores", "report", "folds", "losses", "slice_metrics",
            "difference_postprocessing", "semi_supervised", "datasets", "datasets.cache", "datasets.sources",
            "networks.res2net", "networks.infnet", "networks.cyclegan"]
    code = ("import sys\n" + "".join(f"import lightning_normnet.{m}\n" for m in core)
            + "print(sorted({m.split('.')[0] if not m.startswith('lightning_normnet') else '.'.join(m.split('.')[:2])"
              " for m in sys.modules}))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
                        .stdout.replace("'", '"'))
    above = {"lightning", "pytorch_lightning", "datamodules", "callbacks", "lightning_normnet.models",
             "lightning_normnet.methods", "lightning_normnet.runs", "lightning_normnet.cli"}
    assert not above & set(loaded)


def test_score_prediction_by_hand():
    """Six voxels in a row, the model grid = the scan's. Lung M' = 0..4, the model's lung M = 0..3; truth
    lesion 1, 3; voted healthy 0, 1; lesion predicted 2, 3. Table III: tp 1 (3), fp 1 (2), fn 1 (1): DSC 1/2;
    in M' tn 2 (0, 4): specificity 2/3. Table II on the bright voxels the vote covers (H' >= 0.33 in M' and M:
    0..3; voxel 4 lies outside M, so the vote says nothing of it): precision 1/2, sensitivity 1/2,
    specificity 1/2, AUC 3/4 (as in test_metrics); counting voxel 4 would make the sensitivity 1/3."""
    from lightning_normnet.datasets.cache import ScanTruth
    from lightning_normnet.inference import VolumePrediction
    from lightning_normnet.io import Grid
    from lightning_normnet.scores import score_prediction

    grid = Grid((6, 1, 1), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    row = lambda *v: np.array(v).reshape(1, 1, 6)                                        # noqa: E731
    truth = ScanTruth(row(0, 1, 0, 1, 0, 0).astype(bool), row(1, 1, 1, 1, 1, 0).astype(bool),
                      row(0.9, 0.8, 0.5, 0.4, 0.7, 0).astype(np.float32), grid, grid)
    volume = lambda *v: torch.tensor(v).reshape(1, 1, 1, 1, 6)                           # noqa: E731
    prediction = VolumePrediction(volume(0, 0, 1, 1, 0, 0).bool(), volume(1, 1, 0, 0, 0, 0).bool(),
                                  volume(0.9, 0.8, 0.3, 0.1, 0.2, 0.0))
    score, lesion = score_prediction(prediction, volume(1, 1, 1, 1, 0, 0).bool(), truth, "set", "case", "file", 0.33)
    assert lesion.ravel().tolist() == [False, False, True, True, False, False]
    assert (score.dsc, score.psc, score.sen) == (0.5, 0.5, 0.5) and score.spec == pytest.approx(2 / 3)
    assert (score.bright_precision, score.bright_sensitivity, score.bright_specificity) == (0.5, 0.5, 0.5)
    assert score.bright_auc == pytest.approx(0.75)


def test_compare_names_a_damaged_evaluation_file(tmp_path, capsys):
    for name, text in (("broken", '{"schema": 2, "validations": ['), ("old", "[]"), ("partial", '{"schema": 2}')):
        (tmp_path / name).mkdir()
        (tmp_path / name / "evaluation.json").write_text(text)
    for name, message in (("broken", "not valid JSON"), ("old", "evaluation schema 1, this version reads 2"),
                          ("partial", "not an evaluation file of schema 2")):
        assert main(["compare", str(tmp_path / name), str(tmp_path / "old"), "--output", str(tmp_path / "out")]) == 2
        assert f"{tmp_path / name / 'evaluation.json'}: {message}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
