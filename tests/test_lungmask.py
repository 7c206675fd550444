"""The threshold lung mask against real reference masks.

Measured with the default config (threshold -320 HU, closing radius 6 mm):
Dice 0.964 on cip/ct-64 (wholeLung-64), 0.978 on imlab id001, 0.928 on id002
(a large lesion that the reference includes), 0.980 on id003.
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
