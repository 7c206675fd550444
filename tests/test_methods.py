"""Every method alike: a tiny run of each of the six is trained once, then each is evaluated, predicts on a
real scan (COVID-CT-MD P001) in the scan's own geometry, and all six are compared in one table; NormNet
checkpoints vote, mixed ones are refused; cross-validation takes every method trained on data.train;
and a method registered from this file runs train, evaluate, predict and compare with no other edit."""
import json
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from datamodules.covid_semiseg import labelled_slices
from datamodules.evaluation import EvaluationDataModule
from lightning_normnet.cli import main
from lightning_normnet.config import load_config
from lightning_normnet.inference import VolumePrediction
from lightning_normnet.io import read_ct, read_image, write_image
from lightning_normnet.lungmask import lung_mask
from lightning_normnet.methods import REGISTRY, Method, register
from lightning_normnet.methods.fitting import as_dict, score_only
from lightning_normnet.models.base import SegmentationModule
from lightning_normnet.runs.checkpoints import load_model
from lightning_normnet.scores import read_evaluation

from .conftest import TINY, shared_data

SLICES = ["infnet.train_size=64", "infnet.scales=[0.75,1.0]", "infnet.batch_size=4", "infnet.val_every=1",
          "infnet.epochs=1"]
SEMI = ["semi.max_unlabelled=7", "semi.k=5", "semi.pretrain_epochs=1", "semi.finetune_epochs=1",
        "semi.pretrain_batch_size=4"]
METHODS = {
    "normnet_quick": [],
    "threshold": [],
    "cyclegan": ["data.phantom.train_volumes=2", "cyclegan.stages=4", "cyclegan.base_channels=4", "cyclegan.crop=32",
                 "cyclegan.epochs=1", "cyclegan.schedule_epochs=1", "cyclegan.decay_epochs=1",
                 "cyclegan.min_lesion_pixels=5", "cyclegan.min_lung_pixels=50"],
    "infnet": SLICES,
    "semi_infnet": SLICES + SEMI,
    "unet3d": ["data.phantom.train_volumes=2", "unet3d.patch=[32,32,16]", "unet3d.channels=[4,4,8,8,16]",
               "unet3d.batches_per_epoch=2", "unet3d.max_epochs=1"],
}
LABEL_FREE = {"normnet_quick", "threshold", "cyclegan"}


@pytest.fixture(scope="session")
def shared(tmp_path_factory) -> list[str]:
    """Cache and run folders of this file's session: one phantom, prepared once."""
    root = tmp_path_factory.mktemp("methods")
    return TINY + [f"data.cache_dir={root / 'cache'}", f"output_dir={root / 'runs'}"]


@pytest.fixture(scope="session")
def tiny_runs(shared) -> dict[str, Path]:
    """A tiny trained run of each built-in method (Semi-Inf-Net in a folder of its own choosing)."""
    runs = {}
    for experiment, settings in METHODS.items():
        output = Path(shared[-1].split("=", 1)[1])
        chosen = ["--run-dir", str(output / "semi-run")] if experiment == "semi_infnet" else []
        assert main(["train", *chosen, experiment, *shared, *settings]) == 0, experiment
        runs[experiment] = Path(chosen[1]) if chosen else next((output / experiment).glob("train-*"))
    return runs


@pytest.mark.parametrize("experiment", list(METHODS))
def test_each_method_trains_and_evaluates_alike(experiment, tiny_runs, shared):
    """The run records its method and group; `evaluate` of its last checkpoint scores the same volumes
    exactly as the run's last validation did (the same weights, scored the same way)."""
    run = tiny_runs[experiment]
    trained = read_evaluation(run)
    assert trained.run == experiment and trained.label_free == (experiment in LABEL_FREE)
    assert trained.method == experiment.removesuffix("_quick")
    phantom = [s for s in trained.last.volumes if s.dataset == "phantom"]
    assert [s.name for s in phantom] == ["covid_000", "covid_001"]
    assert all(0 <= s.dsc <= 1 and 0 <= s.spec <= 1 for s in phantom)
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "volumes.csv").is_file()
    if experiment not in ("threshold", "semi_infnet"):    # periodic checkpoints, and the best validation's
        saved = {p.name for p in (run / "checkpoints").iterdir()}
        assert "best.ckpt" in saved and any(n.startswith(("step", "epoch")) for n in saved), saved
    assert main(["evaluate", "--checkpoint", str(run / "checkpoints" / "last.ckpt"), *shared[-2:]]) == 0
    evaluated = read_evaluation(sorted((Path(shared[-1].split("=", 1)[1]) / experiment).glob("evaluate-*"))[-1])
    again = {s.name: s for s in evaluated.last.volumes if s.dataset == "phantom"}
    for score in phantom:
        assert again[score.name] == score
    if experiment in ("infnet", "semi_infnet"):     # Inf-Net's own test slices, with its own metrics
        assert any(s.dataset == "covid-semiseg" and s.s_alpha >= 0 for s in evaluated.last.volumes)


def test_every_method_predicts_p001_in_its_own_geometry(tiny_runs, tmp_path):
    """A real DICOM series (0.748 x 0.748 x 2 mm): each method's mask has exactly P001's size, spacing,
    origin and direction, and the report picture is written beside its JSON."""
    scan = shared_data("covid-ct-md/P001")
    image = read_ct(scan)
    lung = lung_mask(image, load_config("normnet_quick", TINY).lung_mask)
    write_image(lung, tmp_path / "lung.nii.gz")                               # computed once for the six
    for experiment, run in tiny_runs.items():
        out = tmp_path / f"{experiment}.nrrd"       # NIfTI headers would round the origin to float32
        report = ["--report", str(tmp_path / "normnet.json")] if experiment == "normnet_quick" else []
        assert main(["predict", "--checkpoint", str(run / "checkpoints" / "last.ckpt"), "--input", str(scan),
                     "--output", str(out), "--lung-mask", str(tmp_path / "lung.nii.gz"), *report]) == 0
        mask = read_image(out)
        assert mask.GetSize() == image.GetSize() and mask.GetSpacing() == image.GetSpacing()
        assert mask.GetOrigin() == image.GetOrigin() and mask.GetDirection() == image.GetDirection()
        assert set(np.unique(sitk.GetArrayViewFromImage(mask))) <= {0, 1}
    numbers = json.loads((tmp_path / "normnet.json").read_text())
    assert numbers["method"] == "normnet" and len(numbers["lesion_voxels_per_slice"]) == image.GetSize()[2]
    assert (tmp_path / "normnet.png").stat().st_size > 10_000


def test_compare_puts_all_six_methods_in_one_table(tiny_runs, tmp_path, capsys):
    assert main(["compare", *map(str, tiny_runs.values()), "--output", str(tmp_path / "table")]) == 0
    assert "covid-semiseg: only in infnet, semi_infnet; left out" in capsys.readouterr().out
    rows = (tmp_path / "table" / "compare.md").read_text().splitlines()
    assert rows[0].startswith("| group | method | phantom DSC | phantom PSC | phantom SEN |")
    assert [r.split(" | ")[:2] for r in rows[2:]] == [
        ["| label-free", "cyclegan"], ["| label-free", "normnet_quick"], ["| label-free", "threshold"],
        ["| (semi-)supervised", "infnet"], ["| (semi-)supervised", "semi_infnet"], ["| (semi-)supervised", "unet3d"]]
    assert (tmp_path / "table" / "compare.png").stat().st_size > 1000


def test_normnet_checkpoints_vote_and_mixed_ones_are_refused(tiny_runs, shared, tmp_path, capsys):
    """Two NormNet runs of other seeds vote as one ensemble of their four members (predict and evaluate);
    other methods, other grids, and other methods' several checkpoints are refused, naming the files."""
    normnet, unet = (str(tiny_runs[e] / "checkpoints" / "last.ckpt") for e in ("normnet_quick", "unet3d"))
    assert main(["train", "normnet_quick", *shared, "seed=1", f"output_dir={tmp_path / 'seed1'}"]) == 0
    other_seed = str(next((tmp_path / "seed1" / "normnet_quick").glob("train-*")) / "checkpoints" / "last.ckpt")
    ensemble, _ = load_model([normnet, other_seed])
    members = [m for path in (normnet, other_seed) for m in load_model([path])[0].members]
    assert len(ensemble.members) == 4 and not torch.equal(members[0].model[0].conv.weight,
                                                          members[2].model[0].conv.weight)
    for voting, alone in zip(ensemble.members, members):
        assert all(torch.equal(a, b) for a, b in zip(voting.state_dict().values(), alone.state_dict().values()))
    scan = next(Path(tiny_runs["threshold"].parents[2] / "cache").glob("phantom/*/test/images/covid_000.nii.gz"))
    out = tmp_path / "mask.nii.gz"
    assert main(["predict", "--checkpoint", normnet, other_seed, "--input", str(scan), "--output", str(out)]) == 0
    assert read_image(out).GetSize() == read_image(scan).GetSize()
    assert main(["evaluate", "--checkpoint", normnet, other_seed, *shared[-2:]]) == 0

    checkpoint = torch.load(normnet, map_location="cpu", weights_only=False)
    checkpoint["hyper_parameters"]["config"]["preprocessing"]["spacing"] = [2.0, 2.0, 3.0]
    other_grid = tmp_path / "other-grid.ckpt"
    torch.save(checkpoint, other_grid)
    capsys.readouterr()
    for pair, message in (((normnet, unet), f"{normnet} is a normnet checkpoint and {unet} a unet3d one"),
                          ((normnet, str(other_grid)), f"{normnet} and {other_grid} were trained on different grids "
                                                       "or windows (preprocessing.spacing [4.0, 4.0, 6.0] vs "
                                                       "[2.0, 2.0, 3.0])"),
                          ((unet, unet), "are unet3d checkpoints, which do not vote")):
        refused = tmp_path / "x.nii.gz"
        assert main(["predict", "--checkpoint", *pair, "--input", str(scan), "--output", str(refused)]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x.nii.gz").exists()


def test_cross_validation_takes_every_method_trained_on_labels(shared, capsys):
    """The cycle-GAN (whose slices data.train's masks sort) splits data.train's volumes like the U-Net (in
    test_unet3d); Inf-Net splits COVID-SemiSeg's labelled slices and is scored on the held-out ones;
    NormNet and the threshold are trained on no labels and are refused."""
    settings = METHODS["cyclegan"] + ["data.phantom.train_volumes=3", "cv.folds=3"]
    assert main(["cv", "cyclegan", *shared, *settings]) == 0
    cv_dir = next((Path(shared[-1].split("=", 1)[1]) / "cyclegan").glob("cv-*"))
    summary = json.loads((cv_dir / "cv_summary.json").read_text())
    assert [len(fold) for fold in summary["folds"]] == [1, 1, 1]
    assert sorted(v["name"] for fold in summary["folds"] for v in fold) == ["covid_000", "covid_001", "covid_002"]

    assert main(["cv", "infnet", *shared, *SLICES, "cv.folds=2"]) == 0
    cv_dir = next((Path(shared[-1].split("=", 1)[1]) / "infnet").glob("cv-*"))
    folds = json.loads((cv_dir / "cv_summary.json").read_text())["folds"]
    names = [{s["name"] for s in fold if s["dataset"] == "covid-semiseg"} for fold in folds]
    labelled = {name for _, name in labelled_slices(load_config("infnet", shared + SLICES))}
    assert abs(len(names[0]) - len(names[1])) <= 1 and names[0] | names[1] == labelled and not names[0] & names[1]
    capsys.readouterr()
    for experiment in ("normnet_quick", "threshold"):
        assert main(["cv", experiment, *shared]) == 2
        assert ("is trained on none (methods that are: cyclegan, infnet, semi_infnet, unet3d)"
                in capsys.readouterr().err)


def test_semi_infnet_ran_its_rounds_and_resumes(tiny_runs, shared):
    """7 unlabelled slices, K = 5: two rounds; the same command in the same folder redoes no round."""
    run = tiny_runs["semi_infnet"]
    pool = json.loads((run / "semi" / "pool.json").read_text())
    assert pool["round"] == 2 and len(pool["labelled"]) == 7 and not pool["remaining"]
    assert len(list((run / "semi" / "pseudo-labels").glob("*.png"))) == 7
    before = (run / "semi" / "round.ckpt").stat().st_mtime_ns
    assert main(["train", "--run-dir", str(run), "semi_infnet", *shared, *METHODS["semi_infnet"]]) == 0
    assert (run / "semi" / "round.ckpt").stat().st_mtime_ns == before


def test_a_held_out_fold_is_not_trained_on(shared):
    """Fold 1 of 3 phantom volumes: the U-Net trains on the other two and validates on it; fold 0 of Inf-Net's
    labelled slices: trained on the rest, validated on it instead of the test slices."""
    from datamodules.covid_semiseg import SliceSegmentationDataModule
    from datamodules.labelled_patches import LabelledPatchDataModule

    cfg = load_config("unet3d", shared + METHODS["unet3d"] + ["data.phantom.train_volumes=3", "cv.folds=3",
                                                              "cv.fold=1", "data.test=[]"])
    patches = LabelledPatchDataModule(cfg)
    patches.prepare_data()
    patches.setup("validate")
    trained, held = {p.name for p in patches.training_cases()}, {item[2] for item in patches.volumes.items}
    assert len(trained) == 2 and len(held) == 1 and not trained & held
    cfg = load_config("infnet", shared + SLICES + ["cv.folds=2", "cv.fold=0", "data.test=[]"])
    slices = SliceSegmentationDataModule(cfg)
    slices.prepare_data()
    slices.setup("fit")
    trained = {item[0].stem for item in slices.train_set.items}
    held = {image.stem for image in slices.test_slices.images}
    assert held and not trained & held and trained | held == {name for _, name in labelled_slices(cfg)}


class LungBand(SegmentationModule):
    """A toy method: lesion = lung voxels brighter than `toy.level` of the window."""

    def predict_volume(self, image: torch.Tensor, lung: torch.Tensor) -> VolumePrediction:
        return VolumePrediction(lung.bool() & (image > self.cfg.toy.level))


def test_a_method_registered_here_runs_everywhere(tiny_runs, shared, tmp_path, capsys):
    register(Method(name="toy", label_free=True, module=LungBand, datamodule=EvaluationDataModule,
                    config_groups=("toy",), fit=lambda cfg, run: score_only(run, LungBand(as_dict(cfg)))))
    experiment = tmp_path / "toy.yaml"
    experiment.write_text("base: normnet\nname: toy\nmodel:\n  kind: toy\ntoy:\n  level: 0.3\n")
    try:
        assert main(["train", str(experiment), *shared]) == 0
        run = next((Path(shared[-1].split("=", 1)[1]) / "toy").glob("train-*"))
        checkpoint = str(run / "checkpoints" / "last.ckpt")
        assert main(["evaluate", "--checkpoint", checkpoint, "toy.level=0.5", *shared[-2:]]) == 0
        scan = next(Path(tiny_runs["threshold"].parents[2] / "cache").glob("phantom/*/test/images/covid_001.nii.gz"))
        assert main(["predict", "--checkpoint", checkpoint, "--input", str(scan), "--output",
                     str(tmp_path / "toy.nii.gz")]) == 0
        assert read_image(tmp_path / "toy.nii.gz").GetSize() == read_image(scan).GetSize()
        capsys.readouterr()
        assert main(["compare", str(run), str(tiny_runs["unet3d"]), "--output", str(tmp_path / "cmp")]) == 0
        assert re.search(r"\| label-free \| toy \| \**[\d.]+ ± ", capsys.readouterr().out)
    finally:
        REGISTRY.pop("toy")

