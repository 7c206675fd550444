import torch

from lightning_normnet.targets import healthy_target, training_target


def test_eq1_keeps_bright_healthy_lung_voxels_only():
    healthy = torch.tensor([0.10, 0.33, 0.50, 0.90, 0.70, 0.40])
    lung = torch.tensor([1, 1, 1, 1, 0, 1], dtype=torch.bool)
    lesion = torch.tensor([0, 0, 0, 1, 0, 0], dtype=torch.bool)
    # H >= tau: voxels 1..5; minus lesion (3); inside lung (not 4)
    expected = torch.tensor([0, 1, 1, 0, 0, 1], dtype=torch.bool)
    assert torch.equal(healthy_target(healthy, lung, lesion, 0.33), expected)


def test_ablation_targets():
    healthy = torch.tensor([0.0, 0.5, 0.5])
    lung = torch.tensor([1, 1, 0], dtype=torch.bool)
    lesion = torch.tensor([0, 1, 0], dtype=torch.bool)
    assert training_target("areas", healthy, lung, lesion, 0.33).tolist() == [True, False, False]
    assert training_target("lesions", healthy, lung, lesion, 0.33).tolist() == [False, True, False]
