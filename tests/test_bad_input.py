"""Bad input and faults, as a careless but ordinary user brings them: each is refused at the boundary in one
sentence naming the file and what is wrong, with exit code 2, and nothing is left written; one bad volume of a
training set is skipped with a line; a write is read back before it takes its name."""
import gzip
import locale
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from lightning_normnet import io
from lightning_normnet.cli import main
from lightning_normnet.io import InputError, read_ct, read_mask, write_image

from .conftest import TINY, shared_data

TINY_GRID = ["preprocessing.spacing=[4.0,4.0,6.0]", "preprocessing.in_plane_size=[64,64]", "data.slab=[8,64,64]"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """The last checkpoint of a tiny NormNet run."""
    root = tmp_path_factory.mktemp("bad-input")
    assert main(["train", "normnet_quick", *TINY, f"data.cache_dir={root / 'cache'}",
                 f"output_dir={root / 'runs'}"]) == 0
    return next((root / "runs" / "normnet_quick").glob("train-*")) / "checkpoints" / "last.ckpt"


def real_volume() -> sitk.Image:
    return sitk.ReadImage(str(shared_data("imlab-lung3d/id001-128x128x64.nii.gz")))


def with_voxel(image: sitk.Image, index, value) -> sitk.Image:
    array = sitk.GetArrayFromImage(image)
    array[index] = value
    changed = sitk.GetImageFromArray(array)
    changed.CopyInformation(image)
    return changed


def truncated_copy(source: Path, target: Path, keep: float = 0.6) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * keep)])
    return target


def refused(argv: list[str], capsys, *named: str) -> str:
    """Run the CLI, expect exit code 2 and one error line naming each of `named`; return that line."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for name in named:
        assert str(name) in err, (name, err)
    return err


def leftovers(folder: Path) -> list[str]:
    """Half-written files a write would leave behind (the atomic writer's temporary names)."""
    return [p.name for p in folder.rglob(".tmp-*")]


# ---- reading -------------------------------------------------------------------------------------------

def test_damaged_files_are_refused_whole(tmp_path):
    """Truncated NIfTI (gzipped or raw: SimpleITK pads both with 0 HU), NRRD and MHA; NaN and infinity
    anywhere (SimpleITK reads them as 0 from NIfTI); a truncated lesion mask: each refused naming the file."""
    image = real_volume()
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha"):
        whole = tmp_path / f"whole{suffix}"
        sitk.WriteImage(image, str(whole), useCompression=suffix != ".nii")
        cut = truncated_copy(whole, tmp_path / f"cut{suffix}")
        with pytest.raises(InputError, match=f"^{cut}: .*(truncated|cannot be read)"):
            read_ct(cut)
    nan = tmp_path / "nan.nii.gz"
    sitk.WriteImage(with_voxel(image, (63, 2, 3), np.nan), str(nan))   # the last slice: no sample looks there
    with pytest.raises(InputError, match=r"nan.nii.gz: holds 1 voxels that are NaN or infinite \(the first at "
                                         r"index \(3, 2, 63\)\)"):
        read_ct(nan)
    for suffix in (".nii", ".nrrd"):
        infinite = tmp_path / f"inf{suffix}"
        sitk.WriteImage(with_voxel(with_voxel(image, (5, 6, 7), np.inf), (9, 0, 0), -np.inf), str(infinite))
        with pytest.raises(InputError, match=rf"inf{suffix}: holds 2 voxels that are NaN or infinite"):
            read_ct(infinite)
    lesion = tmp_path / "lesion.nii.gz"
    sitk.WriteImage(sitk.Cast(image > -500, sitk.sitkUInt8), str(lesion))
    with pytest.raises(InputError, match="cut-lesion.nii.gz: its compressed data is truncated"):
        read_mask(truncated_copy(lesion, tmp_path / "cut-lesion.nii.gz"), image, "lesion mask")


def test_implausible_geometry_is_refused(tmp_path):
    """A spacing in metres (a damaged header) and a volume of a few slices are refused."""
    image = real_volume()
    metres = sitk.Image(image)
    metres.SetSpacing([s / 1000 for s in image.GetSpacing()])
    sitk.WriteImage(metres, str(tmp_path / "metres.nrrd"))
    with pytest.raises(InputError, match=r"metres.nrrd: voxel spacing .* lies outside the 0.1-12 mm"):
        read_ct(tmp_path / "metres.nrrd")
    sitk.WriteImage(image[:, :, :4], str(tmp_path / "thin.nii.gz"))
    with pytest.raises(InputError, match="thin.nii.gz: holds 4 slice.s.; a CT volume needs at least 8"):
        read_ct(tmp_path / "thin.nii.gz")


def dicom_series(folder: Path, positions: list[float], uid: str) -> Path:
    """A synthetic axial DICOM series with its slices at `positions` (mm). (ITK's DICOM writer leaves the
    process's LC_CTYPE at "C", which would make Python write later text files as ASCII: restored here.)"""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    character_type = locale.setlocale(locale.LC_CTYPE)
    for i, z in enumerate(positions):
        slice_ = sitk.GetImageFromArray(np.full((1, 16, 16), -1000 + 10 * i, np.int16))
        for tag, value in {"0008|0060": "CT", "0020|000d": "1.2.3", "0020|000e": uid, "0008|0018": f"{uid}.{i + 1}",
                           "0020|0013": str(i + 1), "0020|0032": f"0\\0\\{z}", "0020|0037": "1\\0\\0\\0\\1\\0",
                           "0008|0016": "1.2.840.10008.5.1.4.1.1.2"}.items():
            slice_.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{uid}-{i:03d}.dcm"))
        writer.Execute(slice_)
    locale.setlocale(locale.LC_CTYPE, character_type)
    return folder


def test_damaged_dicom_series_are_refused(tmp_path):
    """Gaps, duplicate positions and mixed spacing are refused, not resampled; so is a folder of two series
    unless one is chosen, and a folder holding a DICOM file that cannot be read."""
    even = [2.0 * i for i in range(10)]
    uid = b"1.2.840.10008.5.1.4.1.1.88.22\0"          # a structured report beside the slices: not a slice
    (tmp_path / "even").mkdir()
    (tmp_path / "even" / "report.dcm").write_bytes(b"\0" * 128 + b"DICM" + struct.pack("<HH", 2, 2) + b"UI"
                                                    + struct.pack("<H", len(uid)) + uid)
    assert read_ct(dicom_series(tmp_path / "even", even, "1.2.3.1")).GetSize() == (16, 16, 10)
    gap = dicom_series(tmp_path / "gap", even[:4] + even[5:], "1.2.3.2")
    with pytest.raises(InputError, match=r"gap: 1 slice\(s\) missing between 1.2.3.2-003.dcm and 1.2.3.2-004.dcm "
                                         r"\(at 6.00 and 10.00 mm\), where the others lie 2 mm apart"):
        read_ct(gap)
    duplicate = dicom_series(tmp_path / "duplicate", even[:5] + [8.0] + even[5:], "1.2.3.3")
    with pytest.raises(InputError, match="duplicate: two slices lie at one position"):
        read_ct(duplicate)
    mixed = dicom_series(tmp_path / "mixed", even[:5] + [9.5, 11.0, 12.5, 14.0, 15.5], "1.2.3.4")
    with pytest.raises(InputError, match="mixed: slice spacing varies from 1.5 to 2 mm"):
        read_ct(mixed)
    two = dicom_series(dicom_series(tmp_path / "two", even, "1.2.3.5"), [1.0 + z for z in even], "1.2.3.6")
    with pytest.raises(InputError, match=r"two: holds 2 DICOM series \(1.2.3.5, 1.2.3.6\): choose one with "
                                         r"--series UID"):
        read_ct(two)
    chosen = sitk.GetArrayFromImage(read_ct(two, series="1.2.3.6"))
    assert chosen.shape == (10, 16, 16) and chosen[0, 0, 0] == -1000
    with pytest.raises(InputError, match="two: holds no DICOM series 1.2.3.9"):
        read_ct(two, series="1.2.3.9")

    real = shutil.copytree(shared_data("cip/ct-64Dicom"), tmp_path / "ct-64")
    (real / "IMG0040.dcm").unlink()
    with pytest.raises(InputError, match=r"ct-64: 1 slice\(s\) missing between IMG0039.dcm and IMG0041.dcm"):
        read_ct(real)
    truncated_copy(shared_data("cip/ct-64Dicom/IMG0040.dcm"), real / "IMG0040.dcm", keep=0.99)
    with pytest.raises(InputError, match=r"ct-64/IMG0040.dcm: a DICOM file that cannot be read"):
        read_ct(real)


# ---- predict: inputs and outputs ---------------------------------------------------------------------------

def test_predict_refuses_bad_scans_and_writes_nothing(checkpoint, tmp_path, capsys):
    """Through the CLI: a NaN scan and a two-series folder are refused; --series chooses the series."""
    nan = tmp_path / "nan.nii.gz"
    sitk.WriteImage(with_voxel(real_volume(), (40, 64, 64), np.nan), str(nan))
    out = tmp_path / "out" / "mask.nii.gz"
    refused(["predict", "--checkpoint", str(checkpoint), "--input", str(nan), "--output", str(out)], capsys,
            f"{nan}: holds 1 voxels that are NaN or infinite")
    two = shutil.copytree(shared_data("cip/ct-64Dicom"), tmp_path / "two")
    dicom_series(two, [2.0 * i for i in range(10)], "1.2.3.7")
    refused(["predict", "--checkpoint", str(checkpoint), "--input", str(two), "--output", str(out)], capsys,
            f"{two}: holds 2 DICOM series")
    assert not out.parent.exists()
    real_uid = next(u for u in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(two)) if u != "1.2.3.7")
    assert main(["predict", "--checkpoint", str(checkpoint), "--input", str(two), "--series", real_uid,
                 "--output", str(out)]) == 0
    assert sitk.ReadImage(str(out)).GetSize() == (64, 64, 79)


def test_predict_refuses_bad_outputs_before_any_work(checkpoint, tmp_path, capsys, monkeypatch):
    """The output is the input (or lies inside its DICOM folder), has an ending no writer takes, is a folder,
    lies under a file or in a folder the user cannot write: refused before the checkpoint is even read."""
    from lightning_normnet.runs import predict

    def no_work(*_args, **_kwargs):
        raise AssertionError("the output must be checked before any work")

    monkeypatch.setattr(predict, "load_model", no_work)
    scan = shutil.copy(shared_data("cip/ct-64.nrrd"), tmp_path / "ct-64.nrrd")
    dicom = shared_data("cip/ct-64Dicom")
    (tmp_path / "a-folder").mkdir()
    (tmp_path / "a-file").write_text("")
    before = sorted(p.name for p in tmp_path.iterdir())
    for source, output, message in (
            (scan, scan, f"is, or lies inside, the input {scan}"),
            (dicom, dicom / "mask.nii.gz", f"is, or lies inside, the input {dicom}"),
            (scan, tmp_path / "mask.png", "write the mask as .nii.gz or .nii or .nrrd or .mha"),
            (scan, tmp_path / "mask", "write the mask as"),
            (scan, tmp_path / "a-folder", "is a folder"),
            (scan, tmp_path / "a-file" / "mask.nii.gz", "cannot be written")):
        refused(["predict", "--checkpoint", str(checkpoint), "--input", str(source), "--output", str(output)],
                capsys, output, message)
    refused(["predict", "--checkpoint", str(checkpoint), "--input", str(scan), "--output",
             str(tmp_path / "mask.nii.gz"), "--report", str(tmp_path / "report.txt")], capsys,
            "report.txt: write the report as .json")
    monkeypatch.setattr(io.os, "access", lambda *_args: False)      # a read-only folder (the tests run as root)
    refused(["predict", "--checkpoint", str(checkpoint), "--input", str(scan), "--output",
             str(tmp_path / "mask.nii.gz")], capsys, "mask.nii.gz: cannot be written", "may write in")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_write_that_does_not_read_back_is_an_error(checkpoint, tmp_path, capsys, monkeypatch):
    """A full disk under SimpleITK leaves a truncated file without an error: the written file is read back
    before it takes its name, so predict fails in one sentence and leaves neither mask nor temporary file."""
    real_write = sitk.WriteImage

    def truncating_write(image, path, useCompression=False):
        real_write(image, path, useCompression)
        truncated_copy(Path(path), Path(path), keep=0.5)

    scan = shared_data("cip/ct-64.nrrd")
    monkeypatch.setattr(sitk, "WriteImage", truncating_write)
    out = tmp_path / "mask.nii.gz"
    refused(["predict", "--checkpoint", str(checkpoint), "--input", str(scan), "--output", str(out)], capsys,
            f"{out}: the written file does not read back")
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_files_follow_the_users_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        path = write_image(sitk.Image(8, 8, 8, sitk.sitkUInt8), tmp_path / "mask.nrrd")
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


# ---- the cache and training sets ----------------------------------------------------------------------------

def prepare(folder: Path, cache: Path) -> list[str]:
    return ["prepare", "normnet_quick", *TINY_GRID, "--input", str(folder), "--output", str(cache)]


def test_a_replaced_scan_is_prepared_again(tmp_path):
    """The cache is keyed by its sources' size and modification time: a scan replaced after `prepare` gets
    its arrays prepared again, not the stale ones."""
    import json

    scans, cache = tmp_path / "scans", tmp_path / "cache"
    scans.mkdir()
    shutil.copy(shared_data("imlab-lung3d/id001-128x128x64.nii.gz"), scans / "case.nii.gz")
    assert main(prepare(scans, cache)) == 0
    meta = cache / "case" / "meta.json"
    first, written = json.loads(meta.read_text()), meta.stat().st_mtime_ns
    assert main(prepare(scans, cache)) == 0 and meta.stat().st_mtime_ns == written      # unchanged: reused
    os.utime(scans / "case.nii.gz", ns=(written + 10**9, written + 10**9))      # touched: prepared again
    assert main(prepare(scans, cache)) == 0 and meta.stat().st_mtime_ns != written
    shutil.copy(shared_data("cip/ct-64.nrrd"), tmp_path / "other.nrrd")
    write_image(read_ct(tmp_path / "other.nrrd"), scans / "case.nii.gz")
    assert main(prepare(scans, cache)) == 0
    second = json.loads(meta.read_text())
    assert second["sources"] != first["sources"] and second["slices"] == 79 and first["slices"] == 64
    assert np.load(cache / "case" / "image.npy").shape == tuple(second["shape"])


def test_two_files_of_one_case_are_refused(tmp_path, capsys):
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(shared_data("cip/ct-64.nrrd"), scans / "case1.nrrd")
    write_image(read_ct(scans / "case1.nrrd"), scans / "case1.nii.gz")
    refused(prepare(scans, tmp_path / "cache"), capsys, scans / "case1.nii.gz", scans / "case1.nrrd",
            "are both case 'case1'")
    assert not (tmp_path / "cache").exists()


def test_one_bad_training_volume_is_skipped_and_none_usable_stops(tmp_path, capsys):
    """Truncated, NaN and too-thin volumes among the healthy training scans are skipped, one line each, and
    the run trains on the rest; a set of only such volumes stops with one sentence and leaves no run folder."""
    good, bad = tmp_path / "healthy", tmp_path / "only-bad"
    good.mkdir()
    bad.mkdir()
    shutil.copy(shared_data("imlab-lung3d/id001-128x128x64.nii.gz"), good / "id001.nii.gz")
    shutil.copy(shared_data("imlab-lung3d/id003-128x128x64.nii.gz"), good / "id003.nii.gz")
    image = real_volume()
    truncated_copy(good / "id001.nii.gz", bad / "cut.nii.gz")
    sitk.WriteImage(with_voxel(image, (10, 10, 10), np.nan), str(bad / "nan.nii.gz"))
    sitk.WriteImage(image[:, :, :5], str(bad / "thin.nii.gz"))
    for path in bad.iterdir():
        shutil.copy(path, good / path.name)
    settings = [*TINY, f"data.cache_dir={tmp_path / 'cache'}", "data.healthy=folder"]
    assert main(["train", "normnet_quick", *settings, f"data.healthy_root={good}",
                 f"output_dir={tmp_path / 'runs'}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name, why in (("cut", "truncated"), ("nan", "NaN or infinite"), ("thin", "needs at least 8")):
        assert any(line.startswith(f"skipped {name}: {good / name}.nii.gz: ") and why in line for line in lines)
    refused(["train", "normnet_quick", *settings, f"data.healthy_root={bad}", f"output_dir={tmp_path / 'bad-runs'}"],
            capsys, "none of the 3 volumes listed could be used")
    assert list((tmp_path / "bad-runs").iterdir()) == []


# ---- checkpoints -------------------------------------------------------------------------------------------

def test_unusable_checkpoints_are_refused(checkpoint, tmp_path, capsys):
    """Garbage, a truncated file, a foreign pickle, a Lightning checkpoint of no configuration, NaN weights
    and weights of another network than the configuration builds: predict and evaluate refuse each."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    (tmp_path / "garbage.ckpt").write_bytes(os.urandom(4096))
    truncated_copy(checkpoint, tmp_path / "truncated.ckpt")
    torch.save({"weights": 1}, tmp_path / "foreign.ckpt")
    torch.save({**saved, "hyper_parameters": {}}, tmp_path / "unconfigured.ckpt")
    nan = {**saved, "state_dict": dict(saved["state_dict"])}
    name = next(k for k, v in nan["state_dict"].items() if v.is_floating_point())
    nan["state_dict"][name] = torch.full_like(nan["state_dict"][name], float("nan"))
    torch.save(nan, tmp_path / "nan.ckpt")
    other = {**saved, "hyper_parameters": {"config": {**saved["hyper_parameters"]["config"]}}}
    other["hyper_parameters"]["config"]["model"] = {**other["hyper_parameters"]["config"]["model"],
                                                    "channels": [4, 8, 32]}
    torch.save(other, tmp_path / "other.ckpt")
    scan = shared_data("cip/ct-64.nrrd")
    out = tmp_path / "mask.nii.gz"
    for file, message in (("garbage", "not a readable checkpoint"), ("truncated", "not a readable checkpoint"),
                          ("foreign", "not a Lightning checkpoint"),
                          ("unconfigured", "not a lightning-normnet checkpoint"),
                          ("nan", f"weight {name} holds NaN or infinite values"),
                          ("other", "its weights do not fit the normnet network")):
        path = tmp_path / f"{file}.ckpt"
        refused(["predict", "--checkpoint", str(path), "--input", str(scan), "--output", str(out)], capsys,
                f"{path}: {message}")
        refused(["evaluate", "--checkpoint", str(path)], capsys, f"{path}: {message}")
    assert not out.exists()
    unlabelled = tmp_path / "unlabelled" / "images"        # evaluation volumes without lesion masks
    unlabelled.mkdir(parents=True)
    shutil.copy(shared_data("cip/ct-64.nrrd"), unlabelled / "ct-64.nrrd")
    refused(["evaluate", "--checkpoint", str(checkpoint), "data.test=[folder]", f"data.test_root={unlabelled.parent}",
             f"data.cache_dir={tmp_path / 'cache'}"], capsys, "none of the 1 volumes listed could be used")
    assert not list(checkpoint.parents[3].glob("normnet_quick/evaluate-*"))


def test_compare_refuses_an_output_that_is_a_file(tmp_path, capsys):
    (tmp_path / "table").write_text("")
    refused(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--output", str(tmp_path / "table")], capsys,
            f"{tmp_path / 'table'}: is a file, not a folder for the comparison")


def test_gzip_check_reads_only_what_it_must(tmp_path):
    """A valid NIfTI with trailing bytes after its voxels (extensions, padding) is read as it is."""
    image = real_volume()[:, :, :8]
    plain = tmp_path / "plain.nii"
    sitk.WriteImage(image, str(plain))
    padded = tmp_path / "padded.nii.gz"
    padded.write_bytes(gzip.compress(plain.read_bytes() + b"\0" * 64))
    assert read_ct(padded).GetSize() == (128, 128, 8)


def test_a_damaged_slice_of_covid_semiseg_is_skipped(tmp_path, capsys):
    """Inf-Net's 2D slices: a truncated JPEG is left out of a listing with one line, and read alone it is
    refused naming the file."""
    from datamodules.covid_semiseg import images_in, read_rgb

    source = sorted(shared_data("covid-semiseg/TestingSet/LungInfection-Test/Imgs").iterdir())[0]
    shutil.copy(source, tmp_path / "good.jpg")
    cut = truncated_copy(source, tmp_path / "cut.jpg", keep=0.5)
    assert images_in(tmp_path) == [tmp_path / "good.jpg"]
    assert f"skipped cut: {cut}: not a readable image" in capsys.readouterr().out
    with pytest.raises(InputError, match=f"{cut}: not a readable image"):
        read_rgb(cut)


def test_cv_on_a_set_of_only_damaged_volumes_stops_and_leaves_nothing(tmp_path, capsys):
    scans = tmp_path / "covid"
    (scans / "images").mkdir(parents=True)
    (scans / "lesions").mkdir()
    truncated_copy(shared_data("imlab-lung3d/id002-128x128x64.nii.gz"), scans / "images" / "id002.nii.gz")
    shutil.copy(shared_data("imlab-lung3d/id002-128x128x64-msk.nii.gz"), scans / "lesions" / "id002.nii.gz")
    refused(["cv", "unet3d", *TINY, "data.train=[folder]", f"data.train_root={scans}", "cv.folds=2",
             f"data.cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'runs'}"], capsys,
            "none of the 1 volumes listed could be used")
    assert not (tmp_path / "runs").exists() and not list((tmp_path / "cache").rglob("meta.json"))
