"""The threshold lung mask against real reference masks.

Measured with the default config (threshold -320 HU, closing radius 6 mm, airways cut with 6 mm):
Dice 0.964 on cip/ct-64 (wholeLung-64), 0.983 on imlab id001, 0.934 on id002
(a large lesion that the reference includes), 0.983 on id003.
"""
import numpy as np
import pytest
import SimpleITK as sitk

from lightning_normnet.config import load_config
from lightning_normnet.io import InputError, read_ct, read_mask
from lightning_normnet.lungmask import lung_mask

from .conftest import shared_data


def dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


@pytest.mark.parametrize("image, reference, minimum", [
    ("cip/ct-64.nrrd", "cip/wholeLung-64.nrrd", 0.95),
    ("imlab-lung3d/id001-128x128x64.nii.gz", "imlab-lung3d/id001-128x128x64-msk.nii.gz", 0.97),
    ("imlab-lung3d/id002-128x128x64.nii.gz", "imlab-lung3d/id002-128x128x64-msk.nii.gz", 0.90),
    ("imlab-lung3d/id003-128x128x64.nii.gz", "imlab-lung3d/id003-128x128x64-msk.nii.gz", 0.97),
])
def test_threshold_backend_matches_reference_masks(image, reference, minimum):
    ct = read_ct(shared_data(image))
    truth = sitk.GetArrayFromImage(read_mask(shared_data(reference), ct)).astype(bool)
    predicted = sitk.GetArrayFromImage(lung_mask(ct, load_config("normnet").lung_mask)).astype(bool)
    assert dice(predicted, truth) >= minimum


def test_empty_lung_is_an_error():
    solid = sitk.GetImageFromArray(np.full((6, 32, 32), 40.0, np.float32))
    with pytest.raises(InputError, match="chest.nii.gz: the lung mask is empty"):
        lung_mask(solid, load_config("normnet").lung_mask, source="chest.nii.gz")


def test_file_backend_needs_a_file():
    cfg = load_config("normnet", ["lung_mask.backend=file"]).lung_mask
    with pytest.raises(InputError, match="no lung mask file"):
        lung_mask(sitk.GetImageFromArray(np.zeros((2, 4, 4), np.float32)), cfg, None, source="scan.nrrd")


def _chest_with_trachea(parenchyma_hu=-850.0):
    """(z, y, x) HU at 5 mm: two lung blocks (z 2-11), a trachea of lumen -1000 HU from the top (z 19) down to
    z 6 that opens into the right lung through a bronchus at z 6, soft tissue elsewhere, air at the border."""
    hu = np.full((20, 40, 40), 40.0, np.float32)
    hu[:, :2], hu[:, -2:], hu[:, :, :2], hu[:, :, -2:] = -1000, -1000, -1000, -1000
    hu[2:12, 8:32, 5:17] = parenchyma_hu
    hu[2:12, 8:32, 23:35] = parenchyma_hu
    hu[6:20, 18:21, 19:22] = -1000.0          # trachea: 3 x 3 voxels = 225 mm2
    hu[6, 18:21, 16:19] = -1000.0             # right main bronchus into the right block
    return hu


def test_the_trachea_is_the_tube_at_the_superior_end():
    from lightning_normnet.lungmask import threshold_lung_mask, trachea_slices
    hu = _chest_with_trachea()
    lungs = threshold_lung_mask(hu, (5.0, 5.0, 5.0), closing_radius_mm=0.0)
    assert trachea_slices(lungs, (5.0, 5.0, 5.0), superior_last=True) == list(range(19, 11, -1))
    assert trachea_slices(lungs, (5.0, 5.0, 5.0), superior_last=False) == []     # the bases: two lungs
    assert trachea_slices(lungs, (1.0, 5.0, 5.0), superior_last=True) == []      # 8 mm: too short for a trachea


def test_large_airways_leave_the_mask_with_their_margin():
    from lightning_normnet.lungmask import remove_large_airways, threshold_lung_mask
    hu = _chest_with_trachea()
    lungs = threshold_lung_mask(hu, (5.0, 5.0, 5.0), closing_radius_mm=0.0)
    kept = remove_large_airways(lungs, hu, (5.0, 5.0, 5.0), superior_last=True, margin_mm=5.0)
    airway = lungs & (hu < -900)
    assert airway.sum() == 135 and not (kept & airway).any()
    # 14 trachea slices of 9 voxels and 9 bronchus voxels; within 5 mm (the face neighbours) is cut
    assert not kept[6, 19, 15] and not kept[5, 19, 16] and kept[6, 19, 14] and kept[4, 19, 16]
    # cut: the 135 airway voxels, and next to the bronchus's end (x 16, z 6, y 18-20) x 15 (3 voxels),
    # z 5 and 7 (6) and y 17 and 21 (2); the left lung keeps every voxel
    assert (lungs & ~kept).sum() == 135 + 3 + 6 + 2 and kept[2:12, 8:32, 23:35].all()
    assert (remove_large_airways(lungs, hu, (5.0, 5.0, 5.0), False, 5.0) == lungs).all()   # no trachea found


def test_an_airway_that_leaks_into_the_lung_is_not_cut():
    """Lungs as dark as the lumen (every threshold joins trachea and lungs, over 150 mL): the mask stays."""
    from lightning_normnet.lungmask import remove_large_airways, threshold_lung_mask
    hu = _chest_with_trachea(parenchyma_hu=-1000.0)
    lungs = threshold_lung_mask(hu, (5.0, 5.0, 5.0), closing_radius_mm=0.0)
    assert (remove_large_airways(lungs, hu, (5.0, 5.0, 5.0), True, 5.0) == lungs).all()


def test_a_stricter_lumen_threshold_is_tried_where_the_first_leaks():
    """Lungs at -920 HU: below -900 the trachea joins them (over 150 mL); below -930 it is alone and is cut."""
    from lightning_normnet.lungmask import remove_large_airways, threshold_lung_mask
    hu = _chest_with_trachea(parenchyma_hu=-920.0)
    lungs = threshold_lung_mask(hu, (5.0, 5.0, 5.0), closing_radius_mm=0.0)
    kept = remove_large_airways(lungs, hu, (5.0, 5.0, 5.0), True, 5.0)
    assert (lungs & ~kept).sum() == 135 + 3 + 6 + 2


def test_the_superior_end_follows_the_image_direction():
    from lightning_normnet.lungmask import superior_is_last
    image = sitk.GetImageFromArray(np.zeros((4, 4, 4), np.float32))
    assert superior_is_last(image) is True
    image.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, -1))          # slices stored head first
    assert superior_is_last(image) is False
    image.SetDirection((1, 0, 0, 0, 0, 1, 0, -1, 0))          # a coronal stack: no top slice, no cut
    assert superior_is_last(image) is None


def test_lung_mask_config_switches_the_airway_cut():
    hu = _chest_with_trachea()
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((5.0, 5.0, 5.0))
    cut = sitk.GetArrayFromImage(lung_mask(image, load_config("normnet", ["lung_mask.closing_radius_mm=0"]).lung_mask))
    kept = sitk.GetArrayFromImage(lung_mask(image, load_config(
        "normnet", ["lung_mask.closing_radius_mm=0", "lung_mask.airway_margin_mm=null"]).lung_mask))
    assert kept[19].any() and not cut[19].any() and cut.sum() < kept.sum()


def test_a_negative_airway_margin_is_refused():
    from lightning_normnet.config import ConfigError
    with pytest.raises(ConfigError, match=r"lung_mask.airway_margin_mm=-1.0 must be null \(keep the airways\) or at"):
        load_config("normnet", ["lung_mask.airway_margin_mm=-1.0"])
