"""Every named dataset read from small synthetic files in that set's exact layout and naming."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from lightning_normnet.datasets.sources import prepare_dataset, prepared_dir
from lightning_normnet.datasets import discover
from lightning_normnet.datasets.cache import load_index
from lightning_normnet.datasets.covid19_ct_seg import mask_name
from lightning_normnet.datasets.luna16 import nodule_free_runs
from lightning_normnet.io import Grid, InputError, StoredWindow, read_ct
from lightning_normnet.phantom import make_chest

SPACING = (6.0, 6.0, 5.0)


def chest(seed: int, covid: bool = False, slices: int = 24):
    """(HU, lung, lesion) arrays (z, y, x) of a small phantom chest."""
    return make_chest(seed, (40, 40, slices), SPACING, covid)


def save(array, path, spacing=SPACING, origin=(0.0, 0.0, 0.0)):
    """Write as the sets ship (.mhd + .raw for LUNA16, .nii.gz otherwise) with a given geometry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin])
    sitk.WriteImage(image, str(path))
    return path


def names(folder):
    return [case["name"] for case in load_index(folder)["cases"]]


def skipped(folder):
    return {s["case"]: s["reason"] for s in load_index(folder)["skipped"]}


# --- LUNA16 -------------------------------------------------------------------------------------

def test_nodule_slices_by_hand():
    """z spacing 2.5 mm from z = -100 mm: a nodule at z = -50 mm (slice 20) of diameter 10 mm reaches
    20 +/- 2, and slices 18..22 (spans 17.5..22.5) overlap it. A margin of 2.5 mm (one slice) takes 17 and
    23 too; one of 1.25 mm reaches 17.5, where slice 17 (16.5..17.5) only touches it: kept."""
    header = Grid((8, 8, 40), (1.0, 1.0, 2.5), (0.0, 0.0, -100.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    nodule = [(3.0, 4.0, -50.0, 5.0)]
    assert nodule_free_runs(header, nodule) == [(0, 18), (23, 40)]
    assert nodule_free_runs(header, nodule, margin_mm=2.5) == [(0, 17), (24, 40)]
    assert nodule_free_runs(header, nodule, margin_mm=1.25) == [(0, 18), (23, 40)]
    assert nodule_free_runs(header, []) == [(0, 40)]
    assert nodule_free_runs(header, [(0.0, 0.0, -100.0, 1.0), (0.0, 0.0, -2.5, 1.0)]) == [(1, 39)]


def test_nodule_slices_follow_the_slice_axis_direction():
    """A scan stored feet-first (direction z = -1): world z = -50 mm is slice (0 - -50) / 2.5 = 20."""
    header = Grid((8, 8, 40), (1.0, 1.0, 2.5), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, -1))
    assert header.slice_index((0.0, 0.0, -50.0)) == pytest.approx(20.0)
    assert nodule_free_runs(header, [(0.0, 0.0, -50.0, 2.5)]) == [(0, 19), (22, 40)]


def write_luna16(root, with_annotations=True):
    """Two subsets, one scan each (the first with a nodule), seg-lungs-LUNA16 masks (3, 4 lungs, 5 trachea)."""
    uids = ["1.3.6.1.4.1.14519.5.2.1.6279.6001.100", "1.3.6.1.4.1.14519.5.2.1.6279.6001.200"]
    origin = (-120.0, -120.0, -300.0)
    for subset, (uid, seed) in enumerate(zip(uids, (1, 2))):
        hu, lung, _ = chest(seed)
        save(hu.astype(np.int16), root / f"subset{subset}" / f"{uid}.mhd", origin=origin)
        labels = np.where(lung, 3, 0).astype(np.uint8)
        labels[:, :, 20:][lung[:, :, 20:]] = 4
        labels[:, 18:22, 18:22] = 5                      # a trachea column: not lung
        save(labels, root / "seg-lungs-LUNA16" / f"{uid}.mhd", origin=origin)
    if with_annotations:
        with open(root / "annotations.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"])
            writer.writerow([uids[0], -60.0, -60.0, -300.0 + 12 * 5.0, 8.0])   # slice 12, reach 0.8 slices
    return uids


def test_luna16_splits_scans_at_nodules_and_uses_its_lung_labels(tmp_path, tiny_config):
    uids = write_luna16(tmp_path / "LUNA16")
    cfg = tiny_config
    cfg.data.healthy, cfg.datasets.luna16.root, cfg.lung_mask.backend = "luna16", str(tmp_path / "LUNA16"), "file"
    listing = discover("luna16", tmp_path / "LUNA16", cfg.datasets.luna16, "healthy")
    assert [(c.name, c.slices) for c in listing.cases] == [
        (f"{uids[0]}_z000-011", (0, 11)), (f"{uids[0]}_z014-024", (14, 24)), (uids[1], (0, 24))]
    assert all(c.lung is not None and c.lung_labels.foreground == (3, 4) for c in listing.cases)

    out = prepare_dataset(cfg, "healthy", "luna16")
    index = load_index(out)
    assert [c["slices"] for c in index["cases"]] == [11, 10, 24]
    whole = index["cases"][2]
    _, lung, _ = chest(2)
    lung_without_trachea = lung.copy()
    lung_without_trachea[:, 18:22, 18:22] = False
    expected_ml = lung_without_trachea.sum() * np.prod(SPACING) / 1000
    assert whole["lung_ml"] == pytest.approx(expected_ml, abs=0.01)


def test_luna16_subsets_and_whole_scans(tmp_path, tiny_config):
    uids = write_luna16(tmp_path / "LUNA16", with_annotations=False)
    options = tiny_config.datasets.luna16
    with pytest.raises(InputError, match="no annotations.csv.*remove_nodule_slices=false"):
        discover("luna16", tmp_path / "LUNA16", options, "healthy")
    options.remove_nodule_slices, options.subsets = False, [1]
    assert [c.name for c in discover("luna16", tmp_path / "LUNA16", options, "healthy").cases] == [uids[1]]


# --- COVID-19-CT-Seg (Ma et al.) ---------------------------------------------------------------

RP_IMAGE = "radiopaedia_org_covid-19-pneumonia-4_85506_1-dcm"


def test_ma_image_names_map_to_mask_names():
    assert mask_name("coronacases_org_001") == "coronacases_001"
    assert mask_name(RP_IMAGE) == "radiopaedia_4_85506_1"
    assert mask_name("radiopaedia_org_covid-19-pneumonia-10_85902_3-dcm") == "radiopaedia_10_85902_3"
    assert mask_name("notes") is None


def write_ma(root, combined_only=False):
    """One coronacases volume in HU and one radiopaedia volume stored as 0-255 of [-1250, 250] HU."""
    cases = {}
    for seed, image_name in ((3, "coronacases_org_001"), (4, RP_IMAGE)):
        hu, lung, lesion = chest(seed, covid=True)
        name = mask_name(image_name)
        cases[name] = (hu, lung, lesion)
        stored = hu if name.startswith("corona") else np.round((np.clip(hu, -1250, 250) + 1250) / 1500 * 255)
        save(stored.astype(np.float32), root / "COVID-19-CT-Seg_20cases" / f"{image_name}.nii.gz")
        sides = np.where(lung, 1, 0) + (lung & (np.arange(40) >= 20))   # 1 left, 2 right
        if combined_only:
            save(np.where(lesion, 3, sides).astype(np.uint8), root / "Lung_and_Infection_Mask" / f"{name}.nii.gz")
        else:
            save(lesion.astype(np.uint8), root / "Infection_Mask" / f"{name}.nii.gz")
            save(sides.astype(np.uint8), root / "Lung_Mask" / f"{name}.nii.gz")
    return cases


def test_coronacases_with_lung_and_infection_masks(tmp_path, tiny_config):
    cases = write_ma(tmp_path / "ma")
    cfg = tiny_config
    cfg.data.test, cfg.datasets.coronacases.root, cfg.lung_mask.backend = ["coronacases"], str(tmp_path / "ma"), "file"
    out = prepare_dataset(cfg, "test", "coronacases")
    [case] = load_index(out)["cases"]
    _, lung, lesion = cases["coronacases_001"]
    assert case["name"] == "coronacases_001"
    assert case["lesion_ml"] == pytest.approx(lesion.sum() * np.prod(SPACING) / 1000, abs=0.01)
    assert case["lung_ml"] == pytest.approx(lung.sum() * np.prod(SPACING) / 1000, abs=0.01)   # labels 1 and 2


def test_combined_mask_variant_gives_lesion_label_3(tmp_path, tiny_config):
    cases = write_ma(tmp_path / "ma", combined_only=True)
    cfg = tiny_config
    cfg.data.test, cfg.datasets.coronacases.root, cfg.lung_mask.backend = ["coronacases"], str(tmp_path / "ma"), "file"
    [case] = load_index(prepare_dataset(cfg, "test", "coronacases"))["cases"]
    _, lung, lesion = cases["coronacases_001"]
    assert case["lesion_ml"] == pytest.approx(lesion.sum() * np.prod(SPACING) / 1000, abs=0.01)
    assert case["lung_ml"] == pytest.approx((lung | lesion).sum() * np.prod(SPACING) / 1000, abs=0.01)


def test_radiopaedia_0_255_is_refused_unless_its_window_is_undone(tmp_path, tiny_config, capsys):
    cases = write_ma(tmp_path / "ma")
    cfg = tiny_config
    cfg.data.test, cfg.datasets.radiopaedia.root = ["radiopaedia"], str(tmp_path / "ma")
    with pytest.raises(InputError, match="none of the 1 volumes"):
        prepare_dataset(cfg, "test", "radiopaedia")
    assert ("windowed to [-1250, 250] and scaled to 0-255, not HU; set datasets.radiopaedia.undo_window=true"
            in capsys.readouterr().out)

    cfg.datasets.radiopaedia.undo_window = True
    assert names(prepare_dataset(cfg, "test", "radiopaedia")) == ["radiopaedia_4_85506_1"]
    hu = cases["radiopaedia_4_85506_1"][0]
    window = StoredWindow(-1250, 250, 255, True, "datasets.radiopaedia.undo_window")
    restored = sitk.GetArrayFromImage(read_ct(tmp_path / "ma" / "COVID-19-CT-Seg_20cases" / f"{RP_IMAGE}.nii.gz",
                                              window))
    inside = (hu > -1250) & (hu < 250)                         # HU outside the window stays clipped
    assert np.abs(restored - hu)[inside].max() <= 1500 / 255 / 2 + 1e-3   # half a 0-255 step


# --- MedSeg -------------------------------------------------------------------------------------

def write_medseg(root, count=6):
    """rp_im/<n>.nii.gz with rp_msk labels 1 GGO (slices 8-9), 2 consolidation (slices 10-11), 3 effusion."""
    for n in range(1, count + 1):
        hu, lung, lesion = chest(10 + n, covid=True)
        labels = np.zeros(lung.shape, np.uint8)
        labels[8:10][lesion[8:10]] = 1
        labels[10:12][lesion[10:12]] = 2
        labels[:, 30:34, 2:5] = 3
        save(hu.astype(np.int16), root / "rp_im" / f"{n}.nii.gz")
        save(labels, root / "rp_msk" / f"{n}.nii.gz")
        save(lung.astype(np.uint8), root / "rp_lung_msk" / f"{n}.nii.gz")


def test_medseg_lesion_labels_and_the_papers_exclusion(tmp_path, tiny_config):
    write_medseg(tmp_path / "medseg")
    cfg = tiny_config
    cfg.data.test, cfg.datasets.medseg.root, cfg.lung_mask.backend = ["medseg"], str(tmp_path / "medseg"), "file"
    out = prepare_dataset(cfg, "test", "medseg")
    assert names(out) == ["1", "2", "3", "4", "5"]
    assert "excluded by datasets.medseg.exclude" in skipped(out)["6"]
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "medseg" / "rp_msk" / "1.nii.gz")))
    first = load_index(out)["cases"][0]
    assert first["lesion_ml"] == pytest.approx(np.isin(labels, (1, 2)).sum() * np.prod(SPACING) / 1000, abs=0.01)

    cfg.datasets.medseg.lesion_labels = [3]
    effusion = prepare_dataset(cfg, "test", "medseg")
    assert effusion != out                                   # another reading, another cache
    assert load_index(effusion)["cases"][0]["lesion_ml"] == pytest.approx(
        (labels == 3).sum() * np.prod(SPACING) / 1000, abs=0.01)


def test_medseg_refuses_unknown_labels(tmp_path, tiny_config):
    write_medseg(tmp_path / "medseg", count=2)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "medseg" / "rp_msk" / "2.nii.gz")))
    labels[0, 0, 0] = 7
    save(labels, tmp_path / "medseg" / "rp_msk" / "2.nii.gz")
    cfg = tiny_config
    cfg.data.test, cfg.datasets.medseg.root, cfg.lung_mask.backend = ["medseg"], str(tmp_path / "medseg"), "file"
    out = prepare_dataset(cfg, "test", "medseg")
    assert names(out) == ["1"] and "lesion mask holds [7], not among its known labels [1, 2, 3]" in skipped(out)["2"]
    cfg.datasets.medseg.lesion_labels = [4]
    with pytest.raises(InputError, match="lesion_labels=\\[4\\]"):
        prepare_dataset(cfg, "test", "medseg")


# --- MosMedData ---------------------------------------------------------------------------------

def write_mosmed(root):
    for study, seed, severity in (("study_0001", 21, 0), ("study_0255", 22, 1), ("study_0300", 23, 1)):
        hu, _, lesion = chest(seed, covid=severity > 0)
        save(hu.astype(np.int16), root / "studies" / f"CT-{severity}" / f"{study}.nii.gz")
        if study == "study_0255":
            save(lesion.astype(np.uint8), root / "masks" / f"{study}_mask.nii.gz")
    save(np.zeros((4, 4, 4), np.uint8), root / "masks" / "study_0999_mask.nii.gz")


def test_mosmed_annotated_studies_and_normal_studies(tmp_path, tiny_config):
    write_mosmed(tmp_path / "COVID19_1110")
    cfg = tiny_config
    cfg.data.test, cfg.datasets.mosmed.root = ["mosmed"], str(tmp_path / "COVID19_1110")
    out = prepare_dataset(cfg, "test", "mosmed")
    assert names(out) == ["study_0255"] and "no study study_0999" in skipped(out)["study_0999"]
    cfg.data.healthy = "mosmed"
    assert names(prepare_dataset(cfg, "healthy", "mosmed")) == ["study_0001"]


# --- UESTC-COVID-19 -----------------------------------------------------------------------------

def write_uestc(root):
    """part1 (non-expert) and part2 (expert); images as [0, 1] of [-1400, 100] HU; label headers wrong."""
    for part, case, seed, z_spacing in (("part1", "case1", 31, 5.0), ("part1", "case2", 36, 2.0),
                                        ("part2", "case3", 33, 2.0)):
        hu, _, lesion = chest(seed, covid=True)
        stored = (np.clip(hu, -1400, 100) + 1400) / 1500
        spacing = (SPACING[0], SPACING[1], z_spacing)
        save(stored.astype(np.float32), root / "UESTC-COVID-19" / part / "image" / f"{case}.nii.gz", spacing)
        save(lesion.astype(np.uint8), root / "UESTC-COVID-19" / part / "label" / f"{case}.nii.gz",
             spacing=(1.0, 1.0, 1.0), origin=(5.0, 5.0, 5.0))


def test_uestc_z_spacing_rule_expert_part_and_stored_window(tmp_path, tiny_config):
    write_uestc(tmp_path / "uestc")
    cfg = tiny_config
    cfg.data.test, cfg.datasets.uestc.root = ["uestc"], str(tmp_path / "uestc")
    out = prepare_dataset(cfg, "test", "uestc")
    assert names(out) == ["part1-case2", "part2-case3"]
    assert "z-spacing 5.00 mm is not below datasets.uestc.max_z_spacing_mm=5" in skipped(out)["part1-case1"]
    cfg.datasets.uestc.expert_only = True
    assert names(prepare_dataset(cfg, "test", "uestc")) == ["part2-case3"]


# --- filters and messages common to all sets ----------------------------------------------------

def test_a_named_set_needs_its_root(tiny_overrides):
    from lightning_normnet.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="data.test entry 'coronacases' needs datasets.coronacases.root"):
        load_config("normnet_quick", tiny_overrides + ["data.test=[coronacases]"])
    with pytest.raises(ConfigError, match="must be one of phantom, folder, coronacases"):
        load_config("normnet_quick", tiny_overrides + ["data.test=[ma]"])
    with pytest.raises(ConfigError, match="data.healthy=luna16 needs datasets.luna16.root"):
        load_config("normnet_quick", tiny_overrides + ["data.healthy=luna16"])
    cfg = load_config("normnet_quick", tiny_overrides + ["data.healthy=luna16", "data.healthy_root=/data/LUNA16"])
    assert cfg.data.healthy_root == "/data/LUNA16"


def test_a_wrong_folder_is_named(tmp_path, tiny_config):
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(InputError, match="no rp_im folder here; is this the MedSeg folder"):
        discover("medseg", tmp_path / "elsewhere", tiny_config.datasets.medseg, "test")
    with pytest.raises(InputError, match="dataset folder not found"):
        discover("uestc", tmp_path / "missing", tiny_config.datasets.uestc, "test")


def test_settings_file_records_what_the_cache_depends_on(tmp_path, tiny_config):
    write_medseg(tmp_path / "medseg", count=2)
    cfg = tiny_config
    cfg.data.test, cfg.datasets.medseg.root, cfg.lung_mask.backend = ["medseg"], str(tmp_path / "medseg"), "file"
    out = prepare_dataset(cfg, "test", "medseg")
    settings = json.loads((out / "settings.json").read_text())
    assert settings["reading"] == {"lesion_labels": [1, 2]} and settings["dataset"] == "medseg"
    cfg.datasets.medseg.exclude = []                          # a listing option: same arrays, same cache
    assert prepared_dir(cfg, "test", "medseg") == out
    assert names(prepare_dataset(cfg, "test", "medseg")) == ["1", "2"]


def test_each_reader_names_what_it_cannot_use(tmp_path, tiny_config):
    """The refusals and skips of every reader, each one sentence naming the file."""
    ds = tiny_config.datasets
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no subset\\*/ folders with .mhd scans"):
        discover("luna16", tmp_path / "empty", ds.luna16, "healthy")

    write_luna16(tmp_path / "luna", with_annotations=False)
    (tmp_path / "luna" / "annotations.csv").write_text("seriesuid,coordX,coordY,coordZ\nx,1,2,3\n")
    with pytest.raises(InputError, match="annotations.csv: lacks the column\\(s\\) diameter_mm"):
        discover("luna16", tmp_path / "luna", ds.luna16, "healthy")
    (tmp_path / "luna" / "annotations.csv").write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\nx,1,2,z,4\n")
    with pytest.raises(InputError, match="annotations.csv: line 2 has a non-numeric"):
        discover("luna16", tmp_path / "luna", ds.luna16, "healthy")

    write_ma(tmp_path / "ma")
    hu = chest(5)[0].astype(np.float32)
    save(hu, tmp_path / "ma" / "COVID-19-CT-Seg_20cases" / "coronacases_org_002.nii.gz")   # no mask
    save(hu, tmp_path / "ma" / "COVID-19-CT-Seg_20cases" / "scan.nii.gz")                  # foreign name
    listing = discover("coronacases", tmp_path / "ma", ds.coronacases, "test")
    reasons = {s["case"]: s["reason"] for s in listing.skipped}
    assert [c.name for c in listing.cases] == ["coronacases_001"]
    assert "coronacases_org_002.nii.gz: no infection mask" in reasons["coronacases_002"]
    assert "scan.nii.gz: not a COVID-19-CT-Seg volume name" in reasons["scan"]

    write_medseg(tmp_path / "medseg", count=1)
    save(hu, tmp_path / "medseg" / "rp_im" / "2.nii.gz")
    assert "no lesion mask rp_msk/2" in discover("medseg", tmp_path / "medseg", ds.medseg, "test").skipped[0]["reason"]

    write_uestc(tmp_path / "uestc")
    (tmp_path / "uestc" / "UESTC-COVID-19" / "part2" / "label" / "case3.nii.gz").unlink()
    listing = discover("uestc", tmp_path / "uestc", ds.uestc, "test")
    assert "case3.nii.gz: no label" in {s["case"]: s["reason"] for s in listing.skipped}["part2-case3"]

    save(hu, tmp_path / "mosmed" / "studies" / "CT-1" / "study_0255.nii.gz")
    with pytest.raises(InputError, match="no CT-0/ folder of normal studies"):
        discover("mosmed", tmp_path / "mosmed", ds.mosmed, "healthy")


def test_slice_labels_mark_infected_slices_of_a_training_set(tmp_path, tiny_config):
    """COVID-CT-MD's P001 with its per-slice labels, as a plain-folder training set without lesion masks:
    prepared slices are wholly infected or wholly not, and the cycle-GAN finds both kinds."""
    from datamodules.unpaired_slices import UnpairedSlices

    from .conftest import shared_data

    source = shared_data("covid-ct-md")
    for folder, name, target in (("images", "P001", source / "P001"),
                                 ("slice_labels", "P001.csv", source / "P001_slice_labels.csv")):
        (tmp_path / "ctmd" / folder).mkdir(parents=True)
        (tmp_path / "ctmd" / folder / name).symlink_to(target)
    cfg = tiny_config
    cfg.data.train, cfg.data.train_root = ["folder"], str(tmp_path / "ctmd")
    out = prepare_dataset(cfg, "train", "folder")
    [case] = load_index(out)["cases"]
    assert case["lesion_from"] == "slice labels" and case["lesion_ml"] is None
    lesion = np.load(out / "P001" / "lesion.npy")
    per_slice = lesion.reshape(lesion.shape[0], -1)
    assert (per_slice.all(axis=1) | ~per_slice.any(axis=1)).all()       # whole slices
    assert per_slice.all(axis=1).any() and not per_slice.any(axis=1).all()
    slices = UnpairedSlices([out / "P001"], crop=32, min_lesion_pixels=10, min_lung_pixels=10, seed=0)
    assert slices.infected and slices.healthy


def test_slice_labels_are_checked(tmp_path):
    from lightning_normnet.io import read_slice_labels

    reference = sitk.GetImageFromArray(np.zeros((3, 2, 2), np.float32))
    (tmp_path / "a.csv").write_text("z_index,infected\n0,1\n2,0\n")
    assert sitk.GetArrayFromImage(read_slice_labels(tmp_path / "a.csv", reference))[:, 0, 0].tolist() == [1, 0, 0]
    (tmp_path / "b.csv").write_text("z_index,infected\n5,1\n")
    with pytest.raises(InputError, match="b.csv: line 2: z_index 5 outside 0..2"):
        read_slice_labels(tmp_path / "b.csv", reference)
    (tmp_path / "c.csv").write_text("slice,label\n0,1\n")
    with pytest.raises(InputError, match="c.csv: slice labels need the columns z_index and infected"):
        read_slice_labels(tmp_path / "c.csv", reference)
