"""The synthetic lesion generator (Sec. III-C) against its equations and distributions."""
import json
import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from scipy import ndimage

from lightning_normnet.config import load_config
from lightning_normnet.lesions import (_merge_blobs, _render, _Sampler, _sample_ellipsoids, _texture_parameters,
                                       blob_texture, discrete_uniform, gaussian_blur, scale_salt_noise,
                                       scale_to_range, synthesize)


def paper_cfg(**changes):
    cfg = load_config("normnet").lesions
    return OmegaConf.merge(cfg, changes)


def sampler(seed=0):
    return _Sampler(torch.Generator().manual_seed(seed), torch.device("cpu"))


def ball_lung(shape=(32, 96, 96)):
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    lung = ((y - shape[1] / 2) / (shape[1] * 0.45)) ** 2 + ((x - shape[2] / 2) / (shape[2] * 0.45)) ** 2 <= 1
    return torch.from_numpy(np.broadcast_to(lung, shape).copy())[None, None]


def test_discrete_uniform_covers_the_rounded_range_evenly():
    s = sampler()
    draws = discrete_uniform(s, torch.full((20000,), 5.0), torch.full((20000,), 10.0))
    counts = np.bincount(draws.numpy(), minlength=11)
    assert set(np.flatnonzero(counts)) == {5, 6, 7, 8, 9, 10}
    np.testing.assert_allclose(counts[5:] / 20000, 1 / 6, atol=0.015)
    half = discrete_uniform(s, torch.full((5000,), 2.5), torch.full((5000,), 5.0))   # lam = 0.5
    assert set(half.unique().tolist()) == {3, 4, 5}


@pytest.mark.parametrize("lam", [1.0, 0.5])
def test_ellipsoid_counts_and_sizes_follow_the_configuration_and_scale_with_lambda(lam):
    cfg = paper_cfg()
    lung = ball_lung().expand(400, 1, -1, -1, -1)
    ell = _sample_ellipsoids(sampler(1), lung, torch.full((400,), lam), cfg)
    per_volume = {c: np.bincount(ell["batch"][ell["size_class"] == c].numpy(), minlength=400) for c in range(3)}
    for c in (0, 1):
        lo, hi = math.floor(5 * lam + 0.5), math.floor(10 * lam + 0.5)
        assert per_volume[c].min() >= lo and per_volume[c].max() <= hi
        assert per_volume[c].mean() == pytest.approx((lo + hi) / 2, abs=0.25)
    assert per_volume[2].max() <= 1
    assert per_volume[2].mean() == pytest.approx(0.2 * lam, abs=0.06)
    for c, (lo, hi) in enumerate((cfg.small_semi_axes, cfg.medium_semi_axes, cfg.large_semi_axes)):
        semi = ell["semi"][ell["size_class"] == c]
        assert semi.min() >= lo and semi.max() <= hi
        assert semi.mean().item() == pytest.approx((lo + hi) / 2, rel=0.1)
    centres = ell["centre"].long()
    assert lung[ell["batch"], 0, centres[:, 0], centres[:, 1], centres[:, 2]].all()   # centred in the lung


@pytest.mark.parametrize("seed", range(6))
def test_an_undeformed_ellipsoid_is_the_lattice_ball_of_its_semi_axes(seed):
    """Semi-axes 6, no deformation or rotation, centred on a lung voxel of the middle region (so the whole
    ball lies in the volume): every integer offset with x^2 + y^2 + z^2 < 36 (895) and none beyond 36; the 30
    offsets on the sphere itself fall either way by float rounding. 895..925 is within 3 % of 4/3 pi 6^3 =
    904.8, whatever the seed."""
    cfg = paper_cfg(small_count=[1, 1], medium_count=[0, 0], large_probability=0.0, small_semi_axes=[6, 6],
                    elastic=False, rotation=False, counts_scale_with_lambda=False)
    centres = torch.zeros(1, 1, 24, 24, 24, dtype=torch.bool)
    centres[..., 6:18, 6:18, 6:18] = True
    ell = _sample_ellipsoids(sampler(seed), centres, torch.ones(1), cfg)
    voxels, _ = _render(ell, (24, 24, 24))
    centre = ell["centre"][0].long()
    rendered = torch.stack([voxels // 576, (voxels // 24) % 24, voxels % 24], 1) - centre
    radius2 = (rendered ** 2).sum(1)
    assert (radius2 <= 36).all() and int((radius2 < 36).sum()) == 895
    assert len(voxels) == pytest.approx(4 / 3 * math.pi * 6 ** 3, rel=0.03)


def test_lesions_stay_in_the_lung_and_only_brighten():
    lung = ball_lung()
    healthy = torch.rand(2, 1, *lung.shape[2:], generator=torch.Generator().manual_seed(0)) * 0.4 * lung
    lung2 = lung.expand(2, -1, -1, -1, -1)
    image, lesion = synthesize(healthy, lung2, torch.tensor([1.0, 0.6]), paper_cfg(length_scale=0.5),
                               torch.Generator().manual_seed(1))
    assert lesion.any()
    assert not (lesion & ~lung2).any()
    assert torch.equal(image[~lesion], healthy[~lesion])                # A = H outside the blobs
    assert (image >= healthy).all() and image.max() <= 1.0               # A = max(H, B_j)


def test_same_seed_same_lesions_other_seed_other_lesions():
    lung = ball_lung()
    healthy = torch.zeros(1, 1, *lung.shape[2:])
    cfg = paper_cfg(length_scale=0.5)
    a = synthesize(healthy, lung, 1.0, cfg, torch.Generator().manual_seed(7))
    b = synthesize(healthy, lung, 1.0, cfg, torch.Generator().manual_seed(7))
    c = synthesize(healthy, lung, 1.0, cfg, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_eq8_scales_the_blob_to_the_drawn_range():
    a2 = torch.tensor([0.1, 0.3, 0.5, 0.9])
    blob = torch.tensor([True, True, True, False])
    np.testing.assert_allclose(scale_to_range(a2, blob, 0.05, 0.25).numpy()[:3], [0.05, 0.15, 0.25], atol=1e-6)


def test_eq6_beta_is_mu0_over_the_mean_above_threshold():
    b2 = torch.tensor([0.1, 0.3, 0.5, 0.0, 0.9])
    blob = torch.tensor([True, True, True, True, False])
    # mean over b2 > 0.2 inside the blob = (0.3 + 0.5) / 2 = 0.4; beta = 0.6 / 0.4 = 1.5
    np.testing.assert_allclose(scale_salt_noise(b2, blob, 0.6, 0.2).numpy(), [0.15, 0.45, 0.75, 0.0, 0.0],
                               atol=1e-6)
    saturating = scale_salt_noise(torch.tensor([0.25, 0.5]), torch.tensor([True, True]), 0.75, 0.2)
    np.testing.assert_allclose(saturating.numpy(), [0.5, 1.0], atol=1e-6)   # clip to [0, 1]


def test_gaussian_blur_equals_scipy():
    volume = torch.rand(1, 1, 9, 20, 17, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for sigma in (0.8, 2.0, 4.5):
        ours = gaussian_blur(volume, sigma)[0, 0].numpy()
        expected = ndimage.gaussian_filter(volume[0, 0].numpy(), sigma, mode="nearest", truncate=3.0)
        radius = int(math.ceil(3 * sigma))
        assert radius == int(3.0 * sigma + 0.5) or sigma == 0.8
        np.testing.assert_allclose(ours, expected, atol=2e-3 if sigma == 0.8 else 1e-6)


def test_texture_parameters_follow_eq4_and_eq8_constraints():
    cfg = paper_cfg()
    p = _texture_parameters(sampler(2), 20000, cfg)
    gap = p["a_high"] - p["a_low"]
    assert (gap > 0.15).all() and p["a_low"].min() >= 0 and p["a_high"].max() <= 0.3
    small = p["sigma_b"] <= 2.0
    assert small.float().mean().item() == pytest.approx(0.7, abs=0.02)
    assert p["sigma_b"].min() >= 0.8 and p["sigma_b"].max() <= 5.0
    assert p["sigma_a"].min() >= 3 and p["sigma_a"].max() <= 15
    assert p["mu0"].min() >= 0.4 and p["mu0"].max() <= 0.8


def test_fixed_a_range_gives_a_constant_probability_map():
    cfg = paper_cfg(a_range=[0.2, 0.2], a_min_gap=0.0)       # the 'fixed a' ablation: a = 0.2
    p = _texture_parameters(sampler(3), 5, cfg)
    assert torch.allclose(p["a_low"], torch.tensor(0.2)) and torch.allclose(p["a_high"], torch.tensor(0.2))


@pytest.mark.parametrize("a", [0.2, 0.7])
def test_eq2_salt_noise_is_bernoulli_of_the_probability_map(a):
    """a constant (a_L = a_U), sigma_b so small that the blur is the identity: b2 = b1 in {0, 1}, the mean of
    b2 above 0.2 is 1, so beta = mu0 and B = mu0 * b1: B takes only the values 0 and mu0, and mu0 on a
    fraction a of the blob (Bernoulli(a); 8000 voxels, binomial sd 0.005)."""
    blob = torch.ones(1, 1, 20, 20, 20, dtype=torch.bool)
    texture = blob_texture(sampler(11), blob, 3.0, a, a, 0.01, 0.6, 0.2)
    assert torch.unique(texture).tolist() == pytest.approx([0.0, 0.6])
    assert (texture > 0).float().mean().item() == pytest.approx(a, abs=0.02)


def test_overlapping_ellipsoids_merge_into_one_blob():
    voxels = torch.tensor([1, 2, 3, 3, 4, 10, 20, 21, 21])
    ids = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3, 4])
    unique, blob = _merge_blobs(voxels, ids, 5)
    by_voxel = dict(zip(unique.tolist(), blob.tolist()))
    assert by_voxel[1] == by_voxel[4]              # ellipsoids 0 and 1 share voxel 3
    assert by_voxel[10] != by_voxel[1]             # ellipsoid 2 touches nothing
    assert by_voxel[20] == by_voxel[21] != by_voxel[10]


def test_blob_texture_composes_eq2_to_eq8_as_written():
    """The whole texture recipe recomputed independently (SciPy filters, the same random draws)."""
    shape = (1, 1, 10, 14, 12)
    blob = torch.zeros(shape, dtype=torch.bool)
    blob[..., 2:8, 3:11, 2:10] = True
    sigma_a, a_low, a_high, sigma_b, mu0 = 3.0, 0.05, 0.25, 1.2, 0.6
    texture = blob_texture(sampler(9), blob, sigma_a, a_low, a_high, sigma_b, mu0, 0.2)

    draws = sampler(9)
    a1 = draws.uniform(shape, 0.0, 1.0)[0, 0].double().numpy()                                # a1 ~ U[0, 1]
    a2 = ndimage.gaussian_filter(a1, sigma_a, mode="nearest", truncate=3.0)                    # Eq. 7
    inside = blob[0, 0].numpy()
    a = (a_high - a_low) * (a2 - a2[inside].min()) / (a2[inside].max() - a2[inside].min()) + a_low  # Eq. 8
    b1 = (draws.uniform(shape, 0.0, 1.0)[0, 0].double().numpy() < a).astype(float)             # Eq. 2
    b2 = ndimage.gaussian_filter(b1, sigma_b, mode="nearest", truncate=3.0)                    # Eq. 3
    beta = mu0 / b2[inside & (b2 > 0.2)].mean()                                                 # Eq. 6
    expected = np.clip(beta * b2, 0, 1) * inside                                                # Eq. 5
    assert 0.05 < expected[inside].mean() < 1
    np.testing.assert_allclose(texture[0, 0].numpy(), expected, atol=2e-4)


def test_a_deformed_ellipsoid_does_not_depend_on_what_it_is_rendered_with():
    lung = ball_lung()
    ell = _sample_ellipsoids(sampler(5), lung, torch.tensor([1.0]), paper_cfg(length_scale=0.5))
    voxels, ids = _render(ell, tuple(lung.shape[2:]))
    smallest = int(torch.argmin(ell["reach"]))
    alone = {key: value[smallest:smallest + 1] if torch.is_tensor(value) else value for key, value in ell.items()}
    alone_voxels, _ = _render(alone, tuple(lung.shape[2:]))
    assert torch.equal(torch.sort(alone_voxels).values, torch.sort(voxels[ids == smallest]).values)
    assert len(alone_voxels) > 0


def test_lambda_is_the_slabs_lung_over_the_largest_slab_lung(tmp_path):
    """Two prepared volumes with 0, 10, 20, 30 and 40, 40 lung voxels per slice; slabs of 2 slices hold
    10, 30, 50 and 80 lung voxels, so |M_max| = 80 and each slab's lambda is its count / 80."""
    from datamodules.healthy import HealthySlabs

    cases = []
    for name, per_slice in (("a", [0, 10, 20, 30]), ("b", [40, 40])):
        lung = np.zeros((len(per_slice), 5, 10), bool)
        for z, count in enumerate(per_slice):
            lung[z].flat[:count] = True
        (tmp_path / name).mkdir()
        np.save(tmp_path / name / "lung.npy", lung)
        np.save(tmp_path / name / "image.npy", lung.astype(np.float32) * 0.5)
        cases.append({"name": name, "source": name, "lung_per_slice": per_slice})
    (tmp_path / "index.json").write_text(json.dumps({"cases": cases}))
    slabs = HealthySlabs(tmp_path, [2, 5, 10], length=40, seed=0)
    assert slabs.m_max == 80
    seen = set()
    for i in range(len(slabs)):
        item = slabs[i]
        assert item["lam"].item() == pytest.approx(item["lung"].sum().item() / 80)
        seen.add(int(item["lung"].sum()))
    assert seen == {10, 30, 50, 80}                    # every slab that holds lung is drawn


def test_each_member_gets_its_own_lesions_and_the_target_is_built_from_h(monkeypatch):
    """Members' generators are seeded by (seed, member, the batch's first item): members differ, the same
    member at the same item repeats (a resumed run). The target (Eq. 1) is computed from H, not from A."""
    import datamodules.healthy as healthy_module
    from datamodules.healthy import HealthyCTDataModule, synthesize_members

    cfg = load_config("normnet_quick", ["model.members=2", "lesions.length_scale=0.5"])
    lung = ball_lung()
    image = torch.rand(1, 1, *lung.shape[2:], generator=torch.Generator().manual_seed(0)) * 0.5 * lung
    batch = {"image": image, "lung": lung, "lam": torch.ones(1)}
    seen = []
    original = healthy_module.training_target
    monkeypatch.setattr(healthy_module, "training_target",
                        lambda kind, h, *rest: seen.append(h) or original(kind, h, *rest))
    datamodule = HealthyCTDataModule(cfg)
    first = synthesize_members(batch, cfg, datamodule.generators(torch.device("cpu"), first_item=12))
    again = synthesize_members(batch, cfg, datamodule.generators(torch.device("cpu"), first_item=12))
    other = synthesize_members(batch, cfg, datamodule.generators(torch.device("cpu"), first_item=14))
    assert not torch.equal(first["inputs"][0], first["inputs"][1])          # two members, two lesion sets
    assert torch.equal(first["inputs"], again["inputs"]) and torch.equal(first["targets"], again["targets"])
    assert not torch.equal(first["inputs"][0], other["inputs"][0])
    assert seen and all(h is image for h in seen)                           # H, never A
