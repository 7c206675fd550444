import numpy as np
import pytest
import SimpleITK as sitk

from lightning_normnet.io import InputError, Labels, read_ct, read_header, read_image, read_mask, write_image

from .conftest import shared_data


def test_reads_the_real_dicom_series():
    image = read_ct(shared_data("covid-ct-md/normal001"))
    assert image.GetSize() == (512, 512, 154)
    assert image.GetSpacing()[0] == pytest.approx(0.635, abs=1e-3)
    assert image.GetSpacing()[2] == pytest.approx(2.0, abs=1e-3)
    array = sitk.GetArrayViewFromImage(image)
    assert array.min() < -900 and array.max() > 500            # air and bone in HU


def test_nrrd_and_its_dicom_copy_agree():
    nrrd = read_ct(shared_data("cip/ct-64.nrrd"))
    dicom = read_ct(shared_data("cip/ct-64Dicom"))
    assert nrrd.GetSize() == dicom.GetSize() == (64, 64, 79)
    np.testing.assert_allclose(nrrd.GetSpacing(), dicom.GetSpacing(), rtol=1e-3)


def _write(tmp_path, array, name, spacing=(1.0, 1.0, 1.0)):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    return write_image(image, tmp_path / name)


def test_windowed_volume_is_refused_as_not_hu(tmp_path):
    path = _write(tmp_path, np.random.default_rng(0).integers(0, 256, (8, 16, 16)).astype(np.float32), "rp.nii.gz")
    with pytest.raises(InputError, match=r"rp.nii.gz.*not Hounsfield"):
        read_ct(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(InputError, match="nothing.nii.gz: no such file"):
        read_ct(tmp_path / "nothing.nii.gz")


def test_mask_with_other_geometry_is_refused(tmp_path):
    image = read_image(_write(tmp_path, np.full((8, 16, 16), -1000, np.float32), "ct.nii.gz"))
    mask = _write(tmp_path, np.ones((8, 16, 16), np.uint8), "mask.nii.gz", spacing=(2.0, 1.0, 1.0))
    with pytest.raises(InputError, match="mask.nii.gz: lung mask geometry differs"):
        read_mask(mask, image, what="lung mask")


def test_write_is_atomic_and_keeps_geometry(tmp_path):
    path = _write(tmp_path, np.zeros((4, 5, 6), np.uint8), "out.nrrd", spacing=(0.7, 0.8, 2.5))
    assert [p.name for p in tmp_path.iterdir()] == ["out.nrrd"]      # no temporary file left
    assert read_image(path).GetSpacing() == pytest.approx((0.7, 0.8, 2.5))


def test_mask_reading_rules(tmp_path):
    """Label maps: every non-zero voxel (left and right lung 1, 2); soft masks: above half of 1 or of 255;
    known labels: only the foreground ones, and an unknown value is refused."""
    image = read_image(_write(tmp_path, np.full((1, 1, 4), -1000, np.float32), "ct.nii.gz"))
    cases = [(np.array([[[0, 1, 2, 0]]], np.uint8), None, [0, 1, 1, 0]),
             (np.array([[[0, 255, 255, 0]]], np.uint8), None, [0, 1, 1, 0]),
             (np.array([[[-3.5, 100.2, 200.7, 340.1]]], np.float32), None, [0, 0, 1, 1]),
             (np.array([[[0.1, 0.49, 0.51, 0.9]]], np.float32), None, [0, 0, 1, 1]),
             (np.array([[[0, 3, 4, 5]]], np.uint8), Labels((3, 4), (3, 4, 5)), [0, 1, 1, 0])]
    for i, (array, labels, expected) in enumerate(cases):
        mask = read_mask(_write(tmp_path, array, f"m{i}.nii.gz"), image, labels=labels)
        assert sitk.GetArrayFromImage(mask).ravel().tolist() == expected
    odd = _write(tmp_path, np.array([[[0, 3, 6, 5]]], np.uint8), "odd.nii.gz")
    with pytest.raises(InputError, match=r"odd.nii.gz: lung mask holds \[6\], not among its known labels"):
        read_mask(odd, image, "lung mask", Labels((3, 4), (3, 4, 5)))


def test_a_mask_with_a_wrong_header_can_take_its_images(tmp_path):
    image = read_image(_write(tmp_path, np.full((2, 3, 4), -1000, np.float32), "ct.nii.gz", spacing=(0.7, 0.7, 5)))
    label = _write(tmp_path, np.ones((2, 3, 4), np.uint8), "label.nii.gz")
    with pytest.raises(InputError, match="geometry differs"):
        read_mask(label, image)
    assert read_mask(label, image, header_from_reference=True).GetSpacing() == pytest.approx((0.7, 0.7, 5))


def test_header_without_voxels_and_single_file_outputs(tmp_path):
    path = _write(tmp_path, np.zeros((7, 5, 6), np.int16), "scan.nrrd", spacing=(0.7, 0.8, 2.5))
    header = read_header(path)
    assert header.size == (6, 5, 7) and header.spacing == pytest.approx((0.7, 0.8, 2.5))
    with pytest.raises(InputError, match="single-file format"):
        write_image(sitk.GetImageFromArray(np.zeros((2, 2, 2), np.uint8)), tmp_path / "out.mhd")
