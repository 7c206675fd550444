import numpy as np
import pytest
import SimpleITK as sitk

from lightning_normnet.config import load_config
from lightning_normnet.io import Grid, read_ct
from lightning_normnet.lungmask import lung_mask
from lightning_normnet.preprocessing import (crop_or_pad, prepare_volume, remove_erroneous_edges, to_original_grid,
                                             window)

from .conftest import shared_data


def test_window_maps_the_hu_range_to_unit_interval():
    hu = np.array([-1000.0, -800.0, -500.0, -350.0, 100.0, 400.0])
    np.testing.assert_allclose(window(hu, -800, 100), [0, 0, 1 / 3, 0.5, 1, 1], atol=1e-6)
    assert window(np.array([-500.0]), -800, 100)[0] == pytest.approx(0.33, abs=0.01)   # T=-500 <-> tau=0.33


def test_erroneous_edges_are_removed_and_vessels_kept():
    lung = np.zeros((12, 20, 20), bool)
    lung[1:11, 2:18, 2:18] = True
    thorax = np.zeros(lung.shape, np.float32)
    thorax[3:9, 2, 5:15] = 0.8        # a bright sheet on the lung boundary: a segmentation error
    thorax[4:8, 9:11, 9:11] = 0.7     # a vessel inside the lung
    cleaned = remove_erroneous_edges(thorax, lung, threshold=0.33, boundary_width=2, min_fraction=0.5)
    assert not cleaned[3:9, 2, 5:15].any()
    assert cleaned[4:8, 9:11, 9:11].all()
    assert cleaned.sum() == lung.sum() - 6 * 10


def test_crop_or_pad_fills_with_zero_outside():
    array = np.arange(16).reshape(1, 4, 4)
    out = crop_or_pad(array, (0, -1, 2), (1, 3, 3))
    np.testing.assert_array_equal(out[0], [[0, 0, 0], [2, 3, 0], [6, 7, 0]])


def _box_chest(spacing):
    hu = np.full((20, 60, 50), 40.0, np.float32)
    hu[3:17, 10:50, 8:42] = -850.0
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing(spacing)
    image.SetOrigin((-40.0, 12.0, 100.0))
    image.SetDirection((-1, 0, 0, 0, 1, 0, 0, 0, 1))    # not LPS: the reorientation must be undone
    lung = sitk.GetImageFromArray((hu < -500).astype(np.uint8))
    lung.CopyInformation(image)
    return image, lung, hu < -500


def test_back_on_the_original_grid_inverts_reorientation_and_crop_exactly():
    cfg = load_config("normnet_quick", ["preprocessing.spacing=[2.5,2.0,3.0]"]).preprocessing
    image, lung, truth = _box_chest((2.5, 2.0, 3.0))
    prepared = prepare_volume(image, lung, cfg)
    assert prepared.image.shape == (14, *cfg.in_plane_size)
    assert prepared.image.max() <= 1 and prepared.image[~prepared.lung].max() == 0
    back = to_original_grid(prepared.lung, prepared.grid, Grid.of(image))
    np.testing.assert_array_equal(back, truth)
    windowed = np.clip((sitk.GetArrayFromImage(image) + 800) / 900, 0, 1) * truth     # linear: exact at voxels
    np.testing.assert_allclose(to_original_grid(prepared.image, prepared.grid, Grid.of(image), linear=True),
                               windowed, atol=1e-6)


def test_back_on_the_original_grid_after_resampling_keeps_the_shape():
    cfg = load_config("normnet_quick").preprocessing          # 3.2 x 3.2 x 4 mm
    image, lung, truth = _box_chest((2.5, 2.0, 3.0))
    prepared = prepare_volume(image, lung, cfg)
    restored = to_original_grid(prepared.lung, prepared.grid, Grid.of(image))
    assert restored.shape == truth.shape
    assert 2 * (restored & truth).sum() / (restored.sum() + truth.sum()) > 0.9


def test_real_dicom_round_trip():
    """A real DICOM series: lung mask -> model grid -> back onto the series' own grid."""
    cfg = load_config("normnet_quick")
    image = read_ct(shared_data("cip/ct-64Dicom"))
    lung = lung_mask(image, cfg.lung_mask)
    prepared = prepare_volume(image, lung, cfg.preprocessing)
    a = to_original_grid(prepared.lung, prepared.grid, Grid.of(image))
    b = sitk.GetArrayFromImage(lung).astype(bool)
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.9
