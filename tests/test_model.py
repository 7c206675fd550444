"""The ensemble LightningModule: members differ by seed, checkpointed training equals plain training."""
import torch
from omegaconf import OmegaConf

from lightning_normnet.config import load_config
from lightning_normnet.models.normnet import NormNet


def _model(tiny_overrides, *extra):
    return NormNet(OmegaConf.to_container(load_config("normnet_quick", tiny_overrides + list(extra))))


def _batch():
    g = torch.Generator().manual_seed(0)
    inputs = torch.rand(2, 2, 1, 8, 32, 32, generator=g)
    return {"inputs": inputs, "targets": (inputs > 0.7).long()}


def test_members_start_from_different_weights(tiny_overrides):
    model = _model(tiny_overrides)
    first, second = (next(m.parameters()) for m in model.members)
    assert not torch.equal(first, second)
    assert torch.equal(first, next(_model(tiny_overrides).members[0].parameters()))   # seeded


def test_activation_checkpointing_gives_the_same_loss_and_gradients(tiny_overrides):
    plain = _model(tiny_overrides)
    checkpointed = _model(tiny_overrides, "model.activation_checkpointing=true")
    checkpointed.load_state_dict(plain.state_dict())
    for model in (plain, checkpointed):
        model.log = lambda *args, **kwargs: None
        model.training_step(_batch(), 0).backward()
    for a, b in zip(plain.parameters(), checkpointed.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)
