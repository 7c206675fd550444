import numpy as np
import pytest
import SimpleITK as sitk

from lightning_normnet.io import InputError, read_ct, read_image, read_mask, write_image

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
