"""The supervised 3D U-Net: its loss by hand, patch sampling, aligned augmentation, fold assignment, and a
tiny cross-validation and predicted masks scored through the command line."""
import json
import math

import numpy as np
import pytest
import torch
import torchio as tio
from omegaconf import OmegaConf

from datamodules.labelled_patches import augmentation, class_labels, random_patch
from lightning_normnet.cli import main
from lightning_normnet.config import load_config
from lightning_normnet.folds import fold_assignment
from lightning_normnet.models.unet3d import tversky_cross_entropy


def logits_for(probabilities):
    """(1, C, N, 1, 1) logits whose softmax over C is `probabilities` (C x N)."""
    return torch.log(torch.tensor(probabilities, dtype=torch.float32))[None, :, :, None, None]


def test_tversky_cross_entropy_by_hand():
    """Voxel 0 (class 0) predicted (0.8, 0.2), voxel 1 (class 1) predicted (0.4, 0.6); alpha = 0.7 on FN,
    beta = 0.3 on FP. Class 0: TP 0.8, FN 0.2, FP 0.4 -> 0.8 / 1.06; class 1: TP 0.6, FN 0.4, FP 0.2 ->
    0.6 / 0.94. Loss = 2 - 0.8/1.06 - 0.6/0.94 + CE, CE = -(ln 0.8 + ln 0.6) / 2."""
    logits = logits_for([[0.8, 0.4], [0.2, 0.6]])
    labels = torch.tensor([0, 1])[None, None, :, None, None]
    expected = 2 - 0.8 / 1.06 - 0.6 / 0.94 - (math.log(0.8) + math.log(0.6)) / 2
    assert tversky_cross_entropy(0.7, 0.3)(logits, labels).item() == pytest.approx(expected, abs=1e-4)
    uniform = logits_for([[0.5, 0.5], [0.5, 0.5]])
    assert tversky_cross_entropy()(uniform, labels).item() == pytest.approx(1 + math.log(2), abs=1e-4)


def test_classes():
    lung = np.array([1, 1, 0, 1], bool)
    lesion = np.array([0, 1, 0, 0], bool)
    assert class_labels(lung, lesion, 3).tolist() == [1, 2, 0, 1]
    assert class_labels(lung, lesion, 2).tolist() == [0, 1, 0, 0]


def test_patches_lie_inside_the_volume():
    rng = np.random.default_rng(0)
    for _ in range(200):
        window = random_patch((30, 100, 60), (80, 40, 40), rng)
        assert window[0] == slice(0, 30)                              # thinner than the patch: the whole axis
        assert all(0 <= w.start and w.stop <= s for w, s in zip(window, (30, 100, 60)))
        assert (window[1].stop - window[1].start, window[2].stop - window[2].start) == (40, 40)


def test_augmentation_keeps_image_and_labels_aligned():
    """Image = 5 x label: after every augmentation at p = 1 the bright region is the labelled one (up to
    interpolation at its border; a misaligned pair scores far lower)."""
    torch.manual_seed(0)
    labels = torch.zeros(1, 64, 64, 48, dtype=torch.long)             # (x, y, z) like a patch
    labels[:, 16:40, 20:50, 10:34] = 1
    for _ in range(5):
        subject = augmentation(1.0)(tio.Subject(image=tio.ScalarImage(tensor=5.0 * labels.float()),
                                                label=tio.LabelMap(tensor=labels)))
        image_region, label_region = subject["image"].data > 2.5, subject["label"].data == 1
        dice = 2 * (image_region & label_region).sum() / (image_region.sum() + label_region.sum())
        assert dice > 0.9


def test_fold_assignment():
    volumes = [("a", f"v{i}") for i in range(7)]
    folds = fold_assignment(volumes, 3, seed=0)
    assert sorted(np.bincount(list(folds.values()))) == [2, 2, 3] and set(folds) == set(volumes)
    assert folds == fold_assignment(list(reversed(volumes)), 3, seed=0)        # deterministic
    assert folds != fold_assignment(volumes, 3, seed=1)
    with pytest.raises(ValueError, match="2 <= k"):
        fold_assignment(volumes, 8, seed=0)


UNET = ["unet3d.patch=[32,32,16]", "unet3d.channels=[4,4,8,8,16]", "unet3d.batches_per_epoch=2", "unet3d.max_epochs=1"]


def test_cross_validation(tmp_path, tiny_overrides):
    assert main(["cv", "unet3d", *tiny_overrides, *UNET, "data.phantom.train_volumes=3", "cv.folds=2"]) == 0
    cv_dir = next((tmp_path / "runs" / "unet3d").glob("cv-*"))
    summary = json.loads((cv_dir / "cv_summary.json").read_text())
    assert [len(fold) for fold in summary["folds"]] in ([2, 1], [1, 2])
    assert "mean over folds" in (cv_dir / "cv_summary.md").read_text()


def test_predicted_masks_from_a_folder_are_scored_on_the_same_grid(tmp_path, tiny_overrides, capsys):
    """The truth itself as 'predictions' scores DSC 1 on every volume; an empty mask 0; a missing one is refused."""
    import shutil

    from lightning_normnet.io import read_image, write_image

    assert main(["prepare", "normnet_quick", *tiny_overrides]) == 0
    truth = sorted((tmp_path / "cache" / "phantom").glob("*/test/lesions/*.nii.gz"))
    (tmp_path / "perfect" / "phantom").mkdir(parents=True)
    for path in truth:
        shutil.copy(path, tmp_path / "perfect" / "phantom" / path.name)
    assert main(["evaluate", "--masks", str(tmp_path / "perfect"), "--experiment", "normnet_quick", "--method",
                 "nnunet", *tiny_overrides]) == 0
    run = next((tmp_path / "runs" / "nnunet").glob("evaluate-*"))
    volumes = json.loads((run / "evaluation.json").read_text())["validations"][-1]["volumes"]
    assert len(volumes) == 2 and all(v["dsc"] == 1.0 for v in volumes)

    empty = read_image(truth[0]) * 0
    (tmp_path / "empty").mkdir()
    for path in truth:
        write_image(empty, tmp_path / "empty" / path.name)
    assert main(["evaluate", "--masks", str(tmp_path / "empty"), "--experiment", "normnet_quick", *tiny_overrides]) == 0
    run = next((tmp_path / "runs" / "external").glob("evaluate-*"))
    assert all(v["dsc"] == 0.0 for v in json.loads((run / "evaluation.json").read_text())["validations"][-1]["volumes"])

    (tmp_path / "empty" / truth[1].name).unlink()
    capsys.readouterr()
    assert main(["evaluate", "--masks", str(tmp_path / "empty"), "--experiment", "normnet_quick", *tiny_overrides]) == 2
    assert "no predicted mask phantom/covid_001.*" in capsys.readouterr().err


def test_compare_keeps_the_shared_datasets_and_checks_their_volumes():
    from lightning_normnet.io import InputError
    from lightning_normnet.runs.compare import MethodResult, check_same_volumes, shared_datasets
    from lightning_normnet.scores import VolumeScore

    def run(name, label_free, volumes):
        return MethodResult(name, label_free, [VolumeScore(d, v, dsc=0.5) for d, v in volumes])

    infnet = run("infnet", False, [("phantom", "a"), ("phantom", "b"), ("covid-semiseg", "s1")])
    normnet = run("normnet", True, [("phantom", "a"), ("phantom", "b")])
    datasets, notes = shared_datasets([normnet, infnet])
    assert datasets == ["phantom"] and notes == ["covid-semiseg: only in infnet; left out"]
    check_same_volumes([normnet, infnet], datasets)
    with pytest.raises(InputError, match="1 only in normnet, 0 only in fewer: phantom/b"):
        check_same_volumes([normnet, run("fewer", False, [("phantom", "a")])], datasets)


def test_the_network_is_the_standard_3d_unet_of_seed_004():
    """Fig. 3 of seed 004: per level two 3x3x3 convolutions each with batch norm and ReLU (5 levels: 10 in
    the encoder, 8 in the decoder), four 2x2x2 max poolings, four 2x2x2 stride-2 transposed convolutions,
    32 feature maps at full resolution and 512 at the lowest, a 1x1x1 output convolution."""
    from torch import nn

    from lightning_normnet.models.unet3d import SupervisedUNet

    net = SupervisedUNet(OmegaConf.to_container(load_config("unet3d"), resolve=True)).net
    modules = list(net.modules())
    convs = [m for m in modules if isinstance(m, nn.Conv3d) and m.kernel_size == (3, 3, 3)]
    assert len(convs) == 18 and all(m.stride == (1, 1, 1) for m in convs)
    assert sum(isinstance(m, nn.BatchNorm3d) for m in modules) == 18
    assert sum(isinstance(m, nn.ReLU) for m in modules) == 18 and not any(isinstance(m, nn.PReLU) for m in modules)
    pools = [m for m in modules if isinstance(m, nn.MaxPool3d)]
    assert len(pools) == 4 and all(m.kernel_size in (2, (2, 2, 2)) for m in pools)
    ups = [m for m in modules if isinstance(m, nn.ConvTranspose3d)]
    assert len(ups) == 4 and all(m.kernel_size == (2, 2, 2) and m.stride == (2, 2, 2) for m in ups)
    assert convs[0].out_channels == 32 and max(m.out_channels for m in convs) == 512
    final = [m for m in modules if isinstance(m, nn.Conv3d) and m.kernel_size == (1, 1, 1)]
    assert len(final) == 1 and final[0].out_channels == 3
