import torch
from omegaconf import OmegaConf

from lightning_normnet.inference import majority_vote, member_probabilities


def test_majority_vote_needs_three_of_five():
    p = torch.tensor([[0.99, 0.99, 0.50], [0.99, 0.10, 0.96], [0.96, 0.20, 0.97],
                      [0.10, 0.99, 0.10], [0.20, 0.96, 0.10]])
    assert majority_vote(p, 0.95).tolist() == [True, True, False]   # 3, 3, 2 members above 0.95


def test_sliding_window_covers_volumes_of_any_size():
    class Constant(torch.nn.Module):
        def forward(self, x):        # logits (0, log 9): healthy probability 0.9 everywhere
            return torch.cat([torch.zeros_like(x), torch.full_like(x, torch.log(torch.tensor(9.0)).item())], 1)
    cfg = OmegaConf.create({"roi": [8, 16, 16], "sw_batch_size": 2, "overlap": 0.25})
    probs = member_probabilities([Constant(), Constant()], torch.zeros(1, 1, 5, 40, 23), cfg)
    assert probs.shape == (2, 1, 1, 5, 40, 23)
    assert torch.allclose(probs, torch.tensor(0.9), atol=1e-5)
