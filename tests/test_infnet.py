"""Inf-Net: its loss against hand-computed cases, its 2D metrics, the network's shapes, Algorithm 1's
bookkeeping (a tiny train, evaluate and Semi-Inf-Net's rounds are in test_methods)."""
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from lightning_normnet.config import load_config
from lightning_normnet.losses import boundary_weights, structure_loss, weighted_bce
from lightning_normnet.models.infnet import load_backbone_weights
from lightning_normnet.networks.infnet import InfNet
from lightning_normnet.networks.res2net import Res2Net50v1b
from lightning_normnet.semi_supervised import PseudoLabelPool
from lightning_normnet.slice_metrics import slice_metrics, structure_measure

CENTRE = torch.zeros(1, 1, 3, 3)
CENTRE[0, 0, 1, 1] = 1


def test_boundary_weights_by_hand():
    """Every 3x3 window (zero-padded) holds the centre: local mean 1/9 everywhere, so the centre weighs
    1 + 5 * 8/9 = 49/9 and the others 1 + 5/9 = 14/9."""
    w = boundary_weights(CENTRE, kernel=3, emphasis=5.0)[0, 0]
    assert w[1, 1].item() == pytest.approx(49 / 9) and w[0, 0].item() == pytest.approx(14 / 9)


def test_structure_loss_by_hand():
    """Logits 0: p = 0.5, BCE = ln 2 at every pixel; weighted IoU: inter = 0.5 * 49/9, union = 0.5 *
    (49/9 + 8 * 14/9) + 49/9, loss = 1 - (inter + 1) / (union - inter + 1) = 1 - 67/228."""
    loss = structure_loss(torch.zeros(1, 1, 3, 3), CENTRE, kernel=3)
    assert loss.item() == pytest.approx(1 - 67 / 228 + math.log(2), rel=1e-6)


def test_bce_is_really_weighted():
    """Logit 0 at the centre (BCE ln 2), -2 elsewhere (BCE ln(1 + e^-2)): the weighted mean counts the
    centre 49/161, the plain mean 1/9."""
    logits = torch.full((1, 1, 3, 3), -2.0)
    logits[0, 0, 1, 1] = 0.0
    weighted = weighted_bce(logits, CENTRE, boundary_weights(CENTRE, 3, 5.0)).item()
    low = math.log(1 + math.exp(-2))
    assert weighted == pytest.approx((49 * math.log(2) + 112 * low) / 161, rel=1e-6)
    assert weighted != pytest.approx((math.log(2) + 8 * low) / 9, rel=1e-3)


def test_slice_metrics_by_hand():
    truth = torch.zeros(4, 4, dtype=torch.bool)
    truth[:2, :2] = True
    perfect = slice_metrics(truth.float(), truth)
    assert perfect["dsc"] == pytest.approx(1) and perfect["s_alpha"] == pytest.approx(1) and perfect["mae"] == 0
    assert perfect["psc"] == 1
    assert perfect["e_phi_mean"] == pytest.approx(16 / 15)      # the measure divides by w*h - 1
    # wholly wrong: object similarity 0; each quadrant is flat in both maps, which the S-measure scores 1
    assert structure_measure((~truth).float(), truth) == pytest.approx(0.5)
    empty = torch.zeros(4, 4, dtype=torch.bool)
    flat = slice_metrics(torch.full((4, 4), 0.3), empty)
    assert flat["s_alpha"] == pytest.approx(0.7) and flat["mae"] == pytest.approx(0.3) and math.isnan(flat["psc"])
    # S_p > k/256 holds everywhere for k = 0..76 (E = 0) and nowhere for the other 179 thresholds (E = 16/15)
    assert flat["e_phi_mean"] == pytest.approx(179 / 256 * 16 / 15)


def test_network_shapes_and_backbone_weights(tmp_path):
    out = InfNet()(torch.randn(2, 3, 64, 64))
    assert [tuple(m.shape) for m in out.segmentation_maps()] == [(2, 1, 64, 64)] * 4
    assert out.edge.shape == (2, 1, 64, 64)
    source = Res2Net50v1b()
    assert sum(p.numel() for p in source.parameters()) == 23_669_352   # Res2Net-50-v1b-26w-4s without fc
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    state["fc.weight"] = torch.zeros(1000, 2048)
    torch.save(state, tmp_path / "res2net.pth")
    target = Res2Net50v1b()
    load_backbone_weights(target, str(tmp_path / "res2net.pth"))
    assert torch.equal(target.layer4[2].conv3.weight, source.layer4[2].conv3.weight)


def test_pseudo_label_rounds_and_resume(tmp_path):
    """12 slices, K = 5: rounds of 5, 5, 2; each slice labelled once; a pool reloaded from its file
    draws what the uninterrupted one draws."""
    slices = [f"s{i:02d}.jpg" for i in range(12)]
    state = tmp_path / "pool.json"
    pool = PseudoLabelPool.load_or_start(state, slices, seed=3)
    uninterrupted = PseudoLabelPool.load_or_start(tmp_path / "other.json", slices, seed=3)
    sizes = []
    while not pool.done:
        drawn = pool.draw(5)
        assert drawn == uninterrupted.draw(5)
        sizes.append(len(drawn))
        pool.add(drawn, state)
        uninterrupted.add(drawn, tmp_path / "other.json")
        pool = PseudoLabelPool.load_or_start(state, slices, seed=3)     # as after a restart
    assert sizes == [5, 5, 2] and sorted(pool.labelled) == slices and pool.round == 3


def _kinds(module: nn.Module) -> list[str]:
    return [type(m).__name__ for m in module.modules() if not isinstance(m, nn.Sequential)]


def test_the_layers_are_the_authors():
    """InfNet_Res2Net.py: BasicConv2d (conv + BN, no ReLU) in the partial decoder, the edge branch and the
    reverse attentions' 1x1 reductions; ReLU after the reverse attentions' middle convolutions (three 5x5 of
    256 channels in the deepest, two 3x3 of 64 in the others); their last convolution has batch norm, 1x1
    in the deepest and 3x3 in the others; the edge head is a 3x3 convolution with batch norm."""
    from lightning_normnet.networks.infnet import PartialDecoder

    net = InfNet()
    assert "ReLU" not in _kinds(PartialDecoder()) and "ReLU" not in _kinds(net.edge_features)
    assert _kinds(net.edge_head) == ["Conv2d", "BatchNorm2d"] and net.edge_head[0].kernel_size == (3, 3)
    for ra, channels, kernel, convs, head in ((net.ra5, 256, 5, 3, 1), (net.ra4, 64, 3, 2, 3),
                                              (net.ra3, 64, 3, 2, 3)):
        assert _kinds(ra.reduce) == ["Conv2d", "BatchNorm2d"] and ra.reduce[0].out_channels == channels
        middle, last = list(ra.refine)[:-1], list(ra.refine)[-1]
        assert len(middle) == convs and all(_kinds(m) == ["Conv2d", "BatchNorm2d", "ReLU"] for m in middle)
        assert all(m[0].kernel_size == (kernel, kernel) and m[0].out_channels == channels for m in middle)
        assert _kinds(last) == ["Conv2d", "BatchNorm2d"] and last[0].kernel_size == (head, head)
        assert last[0].out_channels == 1


def test_pseudo_labels_are_soft_as_the_authors_keep_them(tmp_path):
    """A probability map of 0.2, 0.4, 1.0 rescaled to its own [min, max]: 0, 0.25, 1 -> grey 0, 64 (63.75), 255.
    Read back for training, a soft mask keeps its grey levels; a doctor's label is binarised."""
    from datamodules.covid_semiseg import TrainingSlices
    from lightning_normnet.semi_supervised import soft_pseudo_label

    assert soft_pseudo_label(np.array([[0.2, 0.4], [1.0, 0.2]])).tolist() == [[0, 64], [255, 0]]
    grey = np.zeros((8, 8), np.uint8)
    grey[:, 4:] = 64
    grey[:4, 4:] = 191
    Image.fromarray(grey).save(tmp_path / "mask.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "image.png")
    soft, binary = (TrainingSlices([(tmp_path / "image.png", tmp_path / "mask.png", None, s)], 8)[0]["mask"]
                    for s in (True, False))
    assert sorted(torch.unique(soft).tolist()) == pytest.approx([0, 64 / 255, 191 / 255])
    assert sorted(torch.unique(binary).tolist()) == [0.0, 1.0] and binary[0, 0, 7] == 1 and binary[0, 7, 7] == 0


def test_semi_inf_net_fine_tunes_each_round_as_the_authors(tiny_overrides, tmp_path, monkeypatch):
    """PseudoGenerator.py: Inf-Net first (MyTrain_LungInf.py: lr 1e-4), then each round of K slices fine-tunes
    epochs 1..9 at lr 3e-4; step (i) is a fresh Inf-Net at 1e-4. 7 unlabelled slices, K = 5: rounds of 5
    and 2. The fits are recorded, not run."""
    from lightning_normnet.methods import REGISTRY
    from lightning_normnet.methods import semi_infnet
    from lightning_normnet.runs.run import Run

    assert load_config("semi_infnet").semi.round_epochs == 9 and load_config("semi_infnet").semi.round_lr == 3e-4
    cfg = load_config("semi_infnet", tiny_overrides + ["semi.max_unlabelled=7", "semi.k=5", "infnet.epochs=2",
                                                       "semi.pretrain_epochs=3"])
    fits, rounds = [], []
    monkeypatch.setattr(semi_infnet, "_fit_quietly",
                        lambda run, model, data, epochs: fits.append((model.cfg.infnet.lr, epochs)))
    monkeypatch.setattr(semi_infnet, "_write_pseudo_labels", lambda model, images, masks, size: rounds.append(
        len(images)))
    monkeypatch.setattr(semi_infnet, "train_by_epochs", lambda run, model, epochs, every: fits.append(
        (model.cfg.infnet.lr, epochs)))
    (tmp_path / "run").mkdir()
    semi_infnet.fit_semi_infnet(cfg, Run(cfg, REGISTRY["semi_infnet"], tmp_path / "run"))
    assert rounds == [5, 2]
    assert fits == [(1e-4, 2), (3e-4, 9), (3e-4, 9), (1e-4, 3), (1e-4, 100)]
