"""The prepared cache: it follows its folder, resumes after an interruption, reads real scans, sums up."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from benchmarks.real_scans import HEALTHY
from lightning_normnet.config import load_config
from lightning_normnet.datasets import discover
from lightning_normnet.datasets.sources import prepare_dataset, prepared_dir
from lightning_normnet.io import InputError
from datamodules.healthy import HealthySlabs, SlabAugmentation, transform_in_plane
from lightning_normnet.datasets.cache import load_index
from lightning_normnet.datasets.summary import format_summary, summary_row
from lightning_normnet.phantom import write_phantom_dataset

from .conftest import shared_data


def test_cache_follows_the_folder(tmp_path, tiny_config):
    source = write_phantom_dataset(tmp_path / "all", 2, 0, (80, 80, 36), (4.0, 4.0, 6.0), covid=False)
    folder = tmp_path / "healthy" / "images"
    folder.mkdir(parents=True)
    shutil.copy(source / "images" / "healthy_000.nii.gz", folder)
    tiny_config.data.healthy, tiny_config.data.healthy_root = "folder", str(folder.parent)
    out = prepare_dataset(tiny_config, "healthy", "folder")
    assert [c["name"] for c in load_index(out)["cases"]] == ["healthy_000"]
    first = (out / "healthy_000" / "meta.json").stat().st_mtime_ns

    shutil.copy(source / "images" / "healthy_001.nii.gz", folder)
    assert prepare_dataset(tiny_config, "healthy", "folder") == out
    assert [c["name"] for c in load_index(out)["cases"]] == ["healthy_000", "healthy_001"]
    assert (out / "healthy_000" / "meta.json").stat().st_mtime_ns == first


def test_phantom_count_changes_the_phantom_set(tiny_config):
    two = prepare_dataset(tiny_config, "test", "phantom")
    tiny_config.data.phantom.covid_volumes = 3
    three = prepare_dataset(tiny_config, "test", "phantom")
    assert len(load_index(two)["cases"]) == 2 and len(load_index(three)["cases"]) == 3


def test_file_lung_masks_are_read_from_lungs_folder(tiny_config):
    """lung_mask.backend=file uses <root>/lungs/<case>.*: the phantom's true lungs, dense lesions included."""
    tiny_config.lung_mask.backend = "file"
    tiny_config.preprocessing.edge_removal.at_inference = False   # it would cut lesions at the pleura too
    out = prepare_dataset(tiny_config, "test", "phantom")
    assert out == prepared_dir(tiny_config, "test", "phantom")
    for case in load_index(out)["cases"]:
        lung = np.load(out / case["name"] / "lung.npy")
        lesion = np.load(out / case["name"] / "lesion.npy")
        assert lung.any() and lesion.any()
        assert (lesion & ~lung).sum() <= 0.02 * lesion.sum()     # nearest-neighbour resampling of both masks


def test_real_scans_through_the_plain_folder_reader(tiny_config, capsys):
    """../shared/data/cip as it is: two NRRD scans and a DICOM series folder are read; the two label
    maps beside them are not CT in HU, and each is skipped with its reason."""
    cip = shared_data("cip")
    tiny_config.data.healthy, tiny_config.data.healthy_root = "folder", str(cip)
    out = prepare_dataset(tiny_config, "healthy", "folder")
    index = load_index(out)
    assert [c["name"] for c in index["cases"]] == ["TestInput", "ct-64", "ct-64Dicom"]
    assert {s["case"] for s in index["skipped"]} == {"lm-64", "wholeLung-64"}
    assert all("not Hounsfield units" in s["reason"] for s in index["skipped"])
    printed = capsys.readouterr().out
    assert "skipped lm-64: " in printed and "| folder | healthy | 3 | 2 |" in printed
    dicom, nrrd = index["cases"][2], index["cases"][1]
    assert dicom["slices"] == nrrd["slices"] == 79 and dicom["shape"] == nrrd["shape"]


def test_the_real_scan_recipe_trains_on_four_scans_and_holds_normal001_out():
    """normnet_realscans reads data/realscans-healthy as it is tracked: its links reach the four scans the
    README names, and the report's one unseen healthy scan is normal001."""
    shared_data("cip")
    cfg = load_config("normnet_realscans")
    root = Path(__file__).resolve().parents[1] / cfg.data.healthy_root
    listing = discover(cfg.data.healthy, root, cfg.datasets.folder, "healthy")
    trained = {case.image.resolve() for case in listing.cases}
    expected = {"imlab id001", "imlab id003", "cip ct-64", "cip TestInput"}
    assert trained == {(shared_data(HEALTHY[name])).resolve() for name in expected}
    assert set(HEALTHY) - expected == {"normal001"}


def test_a_link_to_nothing_is_named(tmp_path):
    """A scan whose link dangles would silently leave the training set: it is refused, naming the link."""
    (tmp_path / "scan.nii.gz").symlink_to(tmp_path / "moved" / "scan.nii.gz")
    with pytest.raises(InputError, match=r"scan\.nii\.gz: links to .*moved/scan\.nii\.gz, which does not exist"):
        discover("folder", tmp_path, {}, "healthy")


def test_real_lung_masks_beside_their_scans(tmp_path, tiny_config):
    """imlab-lung3d keeps <id>-msk.nii.gz (soft 0-255 masks) beside <id>.nii.gz: a lungs/ folder of links
    with datasets.folder.lung_suffix=-msk makes them the file backend's masks."""
    imlab = shared_data("imlab-lung3d")
    for folder, pattern in (("images", "id00?-128x128x64.nii.gz"), ("lungs", "*-msk.nii.gz")):
        (tmp_path / "imlab" / folder).mkdir(parents=True)
        for path in imlab.glob(pattern):
            (tmp_path / "imlab" / folder / path.name).symlink_to(path)
    cfg = tiny_config
    cfg.data.healthy, cfg.data.healthy_root = "folder", str(tmp_path / "imlab")
    cfg.lung_mask.backend, cfg.datasets.folder.lung_suffix = "file", "-msk"
    index = load_index(prepare_dataset(cfg, "healthy", "folder"))
    assert [c["name"] for c in index["cases"]] == [f"id00{i}-128x128x64" for i in (1, 2, 3)]
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(imlab / "id001-128x128x64-msk.nii.gz")))
    spacing = sitk.ReadImage(str(imlab / "id001-128x128x64.nii.gz")).GetSpacing()
    assert index["cases"][0]["lung_ml"] == pytest.approx((reference > 127.5).sum() * np.prod(spacing) / 1000,
                                                         abs=0.01)


def test_interrupted_prepare_redoes_only_the_unfinished_case(tiny_config):
    """A case folder without meta.json (the process died while writing it) is prepared again; finished
    cases are not, and no temporary file is left."""
    out = prepare_dataset(tiny_config, "healthy", "phantom")
    done = (out / "healthy_000" / "meta.json").stat().st_mtime_ns
    (out / "healthy_001" / "meta.json").unlink()
    (out / "healthy_001" / "image.npy").write_bytes(b"half")
    prepare_dataset(tiny_config, "healthy", "phantom")
    assert (out / "healthy_000" / "meta.json").stat().st_mtime_ns == done
    assert np.load(out / "healthy_001" / "image.npy").ndim == 3
    assert not list(out.rglob(".tmp-*"))


def test_summary_row_by_hand():
    index = {"cases": [{"spacing": [0.7, 0.7, 1.0], "slices": 100, "lesion_ml": 10.0},
                       {"spacing": [0.8, 0.8, 2.5], "slices": 60, "lesion_ml": 30.0}],
             "skipped": [{"case": "x", "reason": "r"}]}
    row = summary_row("coronacases", "test", index)
    assert row == ["coronacases", "test", "2", "1", "0.70-0.80", "1.00-2.50", "160 (60-100)", "20.0 (10.0-30.0)"]
    assert format_summary([row]).splitlines()[2] == "| " + " | ".join(row) + " |"


def test_slabs_are_drawn_uniformly_over_positions(tmp_path):
    """With slabs of 2 slices, case a has 5 lung-holding starts and case b one: b is drawn a sixth of the
    time (uniform over positions), not half (uniform over cases)."""
    folder = tmp_path / "prepared"
    cases = [{"name": "a", "lung_per_slice": [5] * 6}, {"name": "b", "lung_per_slice": [0, 0, 0, 7]}]
    for value, case in enumerate(cases):
        (folder / case["name"]).mkdir(parents=True)
        depth = len(case["lung_per_slice"])
        np.save(folder / case["name"] / "image.npy", np.full((depth, 4, 4), value, np.float16))
        np.save(folder / case["name"] / "lung.npy", np.ones((depth, 4, 4), bool))
    (folder / "index.json").write_text(json.dumps({"cases": cases, "skipped": [], "training": True}))
    slabs = HealthySlabs(folder, (2, 4, 4), 3000, seed=0)
    from_b = np.array([float(slabs[i]["image"].max()) for i in range(3000)]) == 1.0
    assert abs(from_b.mean() - 1 / 6) < 0.03


def _ramp(width: int = 4) -> torch.Tensor:
    """One slice whose value is its column number, 4 x width, as a slab (1, 4, width)."""
    return torch.arange(width, dtype=torch.float32).expand(4, width)[None].clone()


def test_mirror_is_a_left_right_flip():
    image, lung = torch.arange(12.0).reshape(1, 3, 4), torch.ones(1, 3, 4, dtype=bool)
    mirrored, lung_out = transform_in_plane(image, lung, True, 0.0, (1.0, 1.0))
    assert torch.equal(mirrored, image.flip(-1)) and lung_out.all()


def test_a_quarter_turn_moves_every_voxel_centre_onto_a_voxel_centre():
    """4 x 4 slices turn about their centre (1.5, 1.5): +90 degrees is numpy's clockwise rot90 (rows down),
    image and lung alike."""
    image = torch.arange(32.0).reshape(2, 4, 4)
    lung = torch.zeros(2, 4, 4, dtype=bool)
    lung[:, 0, :2] = True                      # not symmetric: a wrong direction shows
    image_in = image * lung
    turned, lung_out = transform_in_plane(image_in, lung, False, 90.0, (1.0, 1.0))
    assert torch.equal(lung_out, torch.rot90(lung, -1, dims=(1, 2)))
    assert torch.allclose(turned, torch.rot90(image_in, -1, dims=(1, 2)), atol=1e-5)


def test_a_quarter_turn_of_a_slice_wider_than_high_by_hand():
    """4 x 6 voxels, centre (x, y) = (2.5, 1.5): +90 degrees reads output voxel (row, col) from input row
    4 - col, column row + 1, which lies inside for columns 1..4; columns 0 and 5 fall beyond the slab."""
    image = torch.arange(1.0, 25.0).reshape(1, 4, 6)
    turned, lung = transform_in_plane(image, torch.ones(1, 4, 6, dtype=bool), False, 90.0, (1.0, 1.0))
    expected = torch.zeros(4, 6)
    for row in range(4):
        for col in range(1, 5):
            expected[row, col] = image[0, 4 - col, row + 1]
    assert torch.allclose(turned[0], expected, atol=1e-4)
    assert torch.equal(lung[0], expected > 0)


def test_scaling_by_two_samples_between_voxels_by_hand():
    """Content twice as wide: output column centres at -1.5, -0.5, 0.5, 1.5 from the centre read the input
    at -0.75, -0.25, 0.25, 0.75, i.e. columns 0.75, 1.25, 1.75, 2.25 of the ramp; rows are unchanged."""
    scaled, lung = transform_in_plane(_ramp(), torch.ones(1, 4, 4, dtype=bool), False, 0.0, (1.0, 2.0))
    assert torch.allclose(scaled[0], torch.tensor([0.75, 1.25, 1.75, 2.25]).expand(4, 4), atol=1e-5)
    assert lung.all()


def test_shrinking_brings_in_empty_space_beyond_the_slab():
    """Half as wide: columns read at -3, -1, 1, 3 from the centre, i.e. -1.5 (outside: 0, no lung), 0.5 (the
    mean of columns 0 and 1), 2.5, and 4.5 (outside)."""
    shrunk, lung = transform_in_plane(_ramp(), torch.ones(1, 4, 4, dtype=bool), False, 0.0, (1.0, 0.5))
    assert torch.allclose(shrunk[0], torch.tensor([0.0, 0.5, 2.5, 0.0]).expand(4, 4), atol=1e-5)
    assert torch.equal(lung[0], torch.tensor([False, True, True, False]).expand(4, 4))


def test_an_image_zero_outside_the_lung_stays_so_and_the_thorax_is_kept_where_it_was_there():
    lung = torch.zeros(3, 16, 16, dtype=bool)
    lung[:, 4:12, 3:9] = True
    thorax = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0)) + 0.1
    masked, lung_out = transform_in_plane(thorax * lung, lung, False, 30.0, (1.1, 0.9))
    assert lung_out.any() and not masked[~lung_out].any()
    unmasked, _ = transform_in_plane(thorax, lung, False, 30.0, (1.1, 0.9))
    assert (unmasked[~lung_out] > 0).float().mean() > 0.5       # the thorax around the lung stays


def _two_cases(folder):
    cases = []
    for name, depth in (("a", 6), ("b", 4)):
        (folder / name).mkdir(parents=True)
        lung = np.zeros((depth, 8, 8), bool)
        lung[:, 2:6, 1:4] = True
        image = np.random.default_rng(len(name) + depth).random((depth, 8, 8)).astype(np.float16) * lung
        np.save(folder / name / "image.npy", image)
        np.save(folder / name / "lung.npy", lung)
        cases.append({"name": name, "lung_per_slice": [int(s.sum()) for s in lung]})
    (folder / "index.json").write_text(json.dumps({"cases": cases, "skipped": [], "training": True}))


def test_slab_augmentation_is_drawn_from_the_items_seed_after_its_position(tmp_path):
    """No augmentation draws nothing (the slab as stored); mirroring alone, always, gives that slab flipped
    (the position is drawn first, so it stays); a turned and resized item repeats exactly (a resumed run),
    and lambda stays at most 1 where an enlarged slab holds more lung than the largest stored one."""
    _two_cases(tmp_path)
    stored = [torch.from_numpy(np.load(tmp_path / name / "image.npy").astype(np.float32)) for name in "ab"]
    windows = [volume[start:start + 2] for volume in stored for start in range(len(volume) - 1)]
    plain = HealthySlabs(tmp_path, (2, 8, 8), 50, seed=3)
    assert SlabAugmentation().draw(np.random.default_rng(0)) is None
    mirrored = HealthySlabs(tmp_path, (2, 8, 8), 50, seed=3, augmentation=SlabAugmentation(mirror_probability=1))
    varied = HealthySlabs(tmp_path, (2, 8, 8), 50, seed=3,
                          augmentation=SlabAugmentation(0.5, rotation_degrees=20, scaling=0.3))
    changed, capped = 0, 0
    for i in range(50):
        assert any(torch.equal(plain[i]["image"][0], window) for window in windows)
        assert torch.equal(mirrored[i]["image"], plain[i]["image"].flip(-1))
        assert torch.equal(mirrored[i]["lung"], plain[i]["lung"].flip(-1))
        first, again = varied[i], varied[i]
        assert torch.equal(first["image"], again["image"]) and torch.equal(first["lung"], again["lung"])
        assert 0 < first["lam"].item() <= 1
        changed += not torch.equal(first["lung"], plain[i]["lung"])
        capped += int(first["lung"].sum()) > plain.m_max and first["lam"].item() == 1
    assert changed > 40 and capped > 0
