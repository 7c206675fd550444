import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from scipy import ndimage

from benchmarks.reference import postprocess_reference
from lightning_normnet.postprocessing import dilate, mean_filter, postprocess, structuring_element

CFG = OmegaConf.create({"tau": 0.33, "full_threshold": 0.0, "k_d": 9, "k_f": 7, "t_d": 0.2, "t_f": 0.15,
                        "dilation_radius": 1, "dilation_shape": "ball"})


def test_matches_scipy_reference_on_random_volumes():
    rng = np.random.default_rng(0)
    volume = rng.random((20, 30, 30)).astype(np.float32) * 0.6
    lung = np.zeros(volume.shape, bool)
    lung[2:18, 3:27, 3:27] = True
    healthy = ndimage.gaussian_filter(rng.random(volume.shape), 2) > 0.5
    ours = postprocess(torch.from_numpy(volume), torch.from_numpy(lung), torch.from_numpy(healthy), CFG)
    expected = postprocess_reference(volume, lung, healthy, CFG)
    assert expected.any() and not expected.all()
    np.testing.assert_array_equal(ours.numpy(), expected)


def test_isolated_voxel_is_removed_and_a_lesion_grows_into_dim_voxels():
    volume = torch.zeros(15, 15, 15)
    lung = torch.ones(15, 15, 15, dtype=torch.bool)
    healthy = torch.zeros_like(lung)
    volume[2, 2, 2] = 0.5                 # lone bright voxel: mean 1/729 < t_d, dropped
    volume[6:11, 6:11, 6:11] = 0.5        # a bright 5^3 lesion core: mean 125/729 = 0.171 at its centre
    volume[6:11, 6:11, 5] = 0.1           # dim rim (HU < T) next to it
    cfg = OmegaConf.merge(CFG, {"t_d": 0.15})
    lesion = postprocess(volume, lung, healthy, cfg)
    assert not lesion[2, 2, 2]
    assert lesion[8, 8, 8]
    assert mean_filter(volume >= 0.33, 9)[8, 8, 8].item() == pytest.approx(125 / 729, rel=1e-6)
    # I_e is the core block: one voxel out of it a 9^3 window holds 4 * 5 * 5 = 100 < 0.15 * 729 = 109.35
    # bright voxels. The rim (x = 5) is not bright, but the dilation (6-neighbourhood) reaches it and I_g
    # holds it: at its corner (6, 6, 5) the 7^3 window sees 4 * 4 rim + 4 * 4 * 3 core voxels, 64 / 343 =
    # 0.187 > 0.15.
    assert lesion[6:11, 6:11, 5].all()
    assert not lesion[8, 5, 5] and not lesion[8, 8, 4]     # diagonal and two voxels out: not in the dilation
    undilated = postprocess(volume, lung, healthy, OmegaConf.merge(cfg, {"dilation_radius": 0}))
    assert not undilated[..., 5].any() and undilated[8, 8, 8]


def test_dilation_elements():
    point = torch.zeros(5, 5, 5, dtype=torch.bool)
    point[2, 2, 2] = True
    assert dilate(point, 1, "ball").sum() == 7        # the 6-neighbourhood: scipy's default element
    assert dilate(point, 1, "cube").sum() == 27
    assert dilate(point, 2, "ball").sum() == 33


def test_dilation_equals_scipy_for_balls_and_cubes():
    mask = torch.rand(12, 14, 16, generator=torch.Generator().manual_seed(1)) > 0.97
    for radius in (1, 2, 3):
        for shape in ("ball", "cube"):
            element = structuring_element(radius, shape).numpy()
            expected = ndimage.binary_dilation(mask.numpy(), structure=element)
            np.testing.assert_array_equal(dilate(mask, radius, shape).numpy(), expected)


def test_mean_filter_equals_scipy():
    mask = torch.rand(2, 10, 12, 9, generator=torch.Generator().manual_seed(2)) > 0.6
    for kernel in (3, 7, 9):
        expected = np.stack([ndimage.uniform_filter(m.astype(float), kernel, mode="constant") for m in mask.numpy()])
        np.testing.assert_allclose(mean_filter(mask, kernel).numpy(), expected, atol=1e-6)
