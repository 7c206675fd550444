"""Train, validate, evaluate and predict on the phantom through the command line, with a tiny network."""
import json
from pathlib import Path

import SimpleITK as sitk

from lightning_normnet.cli import main
from lightning_normnet.io import read_image


def _only(pattern: str, root: Path) -> Path:
    found = sorted(root.glob(pattern))
    assert len(found) == 1, found
    return found[0]


def test_train_validate_evaluate_predict_on_the_phantom(tmp_path, tiny_overrides):
    assert main(["train", "normnet_quick", *tiny_overrides]) == 0
    run = _only("runs/normnet_quick/train-*", tmp_path)
    history = json.loads((run / "evaluation.json").read_text())["validations"]
    assert history[-1]["step"] == 2 and len(history[-1]["volumes"]) == 2
    assert set(history[-1]["summary"]["phantom"]) >= {"dsc", "psc", "sen", "spec", "bright_auc"}
    assert (run / "evaluation.md").read_text().startswith("| dataset | DSC")
    assert list((run / "overlays").glob("step*/phantom_covid_000.png"))
    checkpoint = run / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()
    datasets = (run / "datasets.md").read_text().splitlines()
    assert datasets[2].startswith("| phantom | healthy | 2 | 0 |") and datasets[3].startswith("| phantom | test | 2 |")

    assert main(["evaluate", "--checkpoint", str(checkpoint), str(checkpoint), *tiny_overrides[-2:],
                 "logging.wandb=false"]) == 0
    evaluation = _only("runs/normnet_quick/evaluate-*", tmp_path)
    assert len(json.loads((evaluation / "evaluation.json").read_text())["validations"][-1]["volumes"]) == 2
    assert (evaluation / "datasets.md").read_text().splitlines()[2].startswith("| phantom | test | 2 |")

    scan = _only("cache/phantom/*/test/images/covid_001.nii.gz", tmp_path)
    mask_path, report_path = tmp_path / "out" / "mask.nrrd", tmp_path / "out" / "report.json"
    assert main(["predict", "--checkpoint", str(checkpoint), "--input", str(scan), "--output", str(mask_path),
                 "--report", str(report_path)]) == 0
    mask, image = read_image(mask_path), read_image(scan)
    assert mask.GetSize() == image.GetSize() and mask.GetSpacing() == image.GetSpacing()
    assert mask.GetOrigin() == image.GetOrigin()
    report = json.loads(report_path.read_text())
    assert len(report["lesion_voxels_per_slice"]) == image.GetSize()[2]
    assert sum(report["lesion_voxels_per_slice"]) == int(sitk.GetArrayViewFromImage(mask).sum())
    voxel_ml = 4.0 * 4.0 * 6.0 / 1000
    assert abs(report["lesion_volume_ml"] - sum(report["lesion_voxels_per_slice"]) * voxel_ml) < 1e-6
    assert report["lung_volume_ml"] > 0
    assert report["percentage_of_infection"] == 100 * report["lesion_volume_ml"] / report["lung_volume_ml"]


def test_wandb_runs_offline_without_a_key(tmp_path, tiny_overrides, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    overrides = [o for o in tiny_overrides if not o.startswith("logging.wandb")] + ["trainer.max_steps=1"]
    assert main(["train", "normnet_quick", *overrides, "logging.wandb=true"]) == 0
    run = _only("runs/normnet_quick/train-*", tmp_path)
    assert list((run / "wandb").glob("offline-run-*")), "expected an offline W&B run"
    assert list((run / "wandb").glob("offline-run-*/files/media/images/val/*.png"))
    assert list((run / "wandb").glob("offline-run-*/files/media/table/datasets*.table.json"))
