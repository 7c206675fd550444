"""The cycle-GAN method: network shapes, its losses and schedule against hand-computed cases, the image
pool and the post-processing on synthetic difference images (a tiny train + evaluate is in test_methods)."""
import random

import numpy as np
import pytest
import torch

from benchmarks.reference import extract_lesions_reference
from lightning_normnet.config import load_config
from lightning_normnet.difference_postprocessing import extract_lesions, fill_holes, kmeans_threshold, otsu_threshold
from lightning_normnet.models.cyclegan import CycleGAN, ImagePool, linear_decay
from lightning_normnet.networks.cyclegan import UNetGenerator, patch_discriminator


def test_generator_and_discriminator_shapes():
    generator = UNetGenerator()
    assert [b[0].out_channels for b in generator.encoder] == [64, 128, 256, 512, 512, 512, 512, 512]
    assert generator(torch.randn(1, 1, 256, 256)).shape == (1, 1, 256, 256)
    with pytest.raises(ValueError, match="multiple of 256"):
        generator(torch.randn(1, 1, 128, 128))
    assert patch_discriminator()(torch.randn(1, 1, 256, 256))[-1].shape == (1, 1, 30, 30)   # 70x70 patches


class Shift(torch.nn.Module):
    def __init__(self, amount):
        super().__init__()
        self.amount = amount

    def forward(self, x):
        return x + self.amount


class Constant(torch.nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, x):
        return [torch.full((x.shape[0], 1, 3, 3), self.value)]


def test_losses_by_hand(tiny_overrides):
    """G_XY adds a = 0.1, G_YX adds b = 0.3, both D say d = 0.4: adversarial 2 (d - 1)^2 = 0.72,
    cycle |a + b| twice = 0.8, identity |a| + |b| = 0.4; total 0.72 + 10 * 0.8 + 5 * 0.4 = 10.72.
    Discriminator: 0.5 ((d - 1)^2 + d^2) = 0.26."""
    cfg = load_config("cyclegan", tiny_overrides + ["cyclegan.stages=4", "cyclegan.crop=32"])
    model = CycleGAN(dict(cfg))
    model.g_xy, model.g_yx, model.d_x, model.d_y = Shift(0.1), Shift(0.3), Constant(0.4), Constant(0.4)
    x, y = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8)
    total, parts, _, _ = model.generator_loss(x, y)
    assert parts["adversarial"].item() == pytest.approx(0.72)
    assert parts["cycle"].item() == pytest.approx(0.8) and parts["identity"].item() == pytest.approx(0.4)
    assert total.item() == pytest.approx(10.72)
    assert model.discriminator_loss(y, x, model.d_y).item() == pytest.approx(0.26)


def test_learning_rate_schedule_by_hand():
    factor = linear_decay(100, 50)       # epochs 0-49 at 1; 50 at 49/50; 74 at 25/50; the last, 99, at 0
    assert [factor(e) for e in (0, 49, 50, 74, 84, 99)] == pytest.approx([1, 1, 0.98, 0.5, 0.3, 0])


def test_image_pool_keeps_its_size_and_returns_old_fakes():
    random.seed(0)
    pool = ImagePool(2)
    first = pool.query(torch.zeros(2, 1, 1, 1))
    assert torch.equal(first, torch.zeros(2, 1, 1, 1)) and len(pool.images) == 2
    returned = torch.cat([pool.query(torch.full((1, 1, 1, 1), float(i))) for i in range(1, 41)]).flatten()
    assert len(pool.images) == 2
    assert (returned != torch.arange(1, 41).float()).any()       # some calls hand back an older image


def test_thresholds_by_hand():
    assert kmeans_threshold(torch.tensor([0.0, 0.0, 0.0, 10.0, 10.0])).item() == pytest.approx(5.0)
    from skimage.filters import threshold_otsu

    values = np.concatenate([np.zeros(50), np.ones(50), np.random.default_rng(0).random(40)]).astype(np.float32)
    assert otsu_threshold(torch.from_numpy(values)).item() == pytest.approx(threshold_otsu(values), rel=1e-5)


def test_postprocessing_recovers_a_lesion_from_a_noisy_difference():
    """A disk 0.6 brighter than a uniform [0, 0.1) noise floor, plus salt noise the median filter removes."""
    y, x = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    disk = ((y - 30) ** 2 + (x - 34) ** 2 < 100)[None, None]
    generator = torch.Generator().manual_seed(0)
    infected = 0.1 * torch.rand(1, 1, 64, 64, generator=generator) + 0.6 * disk
    infected[0, 0, 5, 5] = infected[0, 0, 50, 10] = 1.0
    lung = torch.ones(1, 1, 64, 64, dtype=torch.bool)
    for clustering in ("kmeans", "otsu"):
        lesion = extract_lesions(infected, torch.zeros_like(infected), lung, clustering=clustering)
        assert 2 * (lesion & disk).sum() / (lesion.sum() + disk.sum()) > 0.95
        assert not lesion[0, 0, 5, 5] and not lesion[0, 0, 50, 10]
    ring = disk & ((y - 30) ** 2 + (x - 34) ** 2 >= 25)[None, None]
    assert torch.equal(fill_holes(ring), disk)


def test_postprocessing_equals_the_plain_scipy_reference():
    """Batched torch (median, k-means or Otsu, Gaussian, fill, opening) = scipy/scikit-image slice by slice."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:96, :96]
    lung = np.zeros((6, 96, 96), bool)
    lung[:, 10:86, 8:90] = True
    infected = (0.1 * rng.random(lung.shape)).astype(np.float32)
    for i in range(6):
        cy, cx, r = rng.integers(25, 70), rng.integers(25, 70), rng.integers(5, 15)
        infected[i] += 0.5 * ((y - cy) ** 2 + (x - cx) ** 2 < r * r)
    healthy = (0.05 * rng.random(lung.shape)).astype(np.float32)
    for clustering in ("kmeans", "otsu"):
        reference = extract_lesions_reference(infected, healthy, lung, clustering=clustering)
        batched = extract_lesions(*(torch.from_numpy(a)[:, None] for a in (infected, healthy, lung)),
                                  clustering=clustering)[:, 0].numpy()
        assert reference.sum() > 500 and np.array_equal(batched, reference)


def test_the_paper_configuration_trains_and_infers_on_lung_centred_256_slices():
    """Seed 002: 1 mm slices cropped to 256 x 256 (around the lungs here), the 256 crop is then the whole
    slice; 100-epoch schedule, stopped at 85. A lung box of rows 100-299 and columns 150-349 of a 512^2
    slice is cut from row 200 - 128 = 72 and column 250 - 128 = 122, which centres it."""
    from lightning_normnet.preprocessing import crop_or_pad, lung_centred_window

    c = load_config("cyclegan")
    assert list(c.preprocessing.in_plane_size) == [256, 256] and list(c.preprocessing.spacing) == [1.0, 1.0, 1.0]
    assert c.cyclegan.crop == 256 and (c.cyclegan.epochs, c.cyclegan.schedule_epochs, c.cyclegan.decay_epochs) == \
        (85, 100, 50)
    lung = np.zeros((3, 512, 512), bool)
    lung[1, 100:300, 150:350] = True
    start = lung_centred_window(lung, [256, 256])
    assert start == (1, 72, 122)
    cropped = crop_or_pad(lung, start, (2, 256, 256))
    rows, cols = np.flatnonzero(cropped.any(axis=(0, 2))), np.flatnonzero(cropped.any(axis=(0, 1)))
    assert (rows[0] + rows[-1] + 1) / 2 == 128 and (cols[0] + cols[-1] + 1) / 2 == 128
