"""NormNet as a LightningModule: an ensemble of MONAI 3D U-Nets trained in one run.

Each member differs only in its seed: its own initial weights and its own
synthetic lesions (made by the datamodule). The member losses (Dice + CE) are
summed; Adam is element-wise, so one Adam over all members equals one per
member. With `model.activation_checkpointing` each member's forward is
recomputed during the backward pass, so only one member's activations are held
at a time (the whole ensemble in one DDP-compatible backward, at the cost of a
second forward). Checkpoints trained apart vote together: `NormNet(config, members)` is
one ensemble of their members.
"""
from __future__ import annotations

import torch
from monai.losses import DiceCELoss
from monai.networks.nets import UNet
from omegaconf import DictConfig
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..inference import VolumePrediction, predict_lesions
from .base import SegmentationModule


def build_unet(model: DictConfig) -> UNet:
    """Two output classes: 0 = not healthy tissue, 1 = healthy tissue."""
    return UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=tuple(model.channels),
                strides=tuple(model.strides), num_res_units=model.num_res_units, norm=model.norm)


class NormNet(SegmentationModule):
    def __init__(self, config: dict, members: list[nn.Module] | None = None):
        """`model.members` U-Nets seeded by (seed, member); or the given members (an ensemble of checkpoints)."""
        super().__init__(config)
        if members is None:
            members = []
            for m in range(self.cfg.model.members):
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(self.cfg.seed * 1000 + m)
                    members.append(build_unet(self.cfg.model))
        self.members = nn.ModuleList(members)
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=self.cfg.model.dice_weight,
                               lambda_ce=self.cfg.model.ce_weight)

    def member_loss(self, m: int, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.loss(self.members[m](inputs), targets)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        total = 0.0
        for m in range(len(self.members)):
            if self.cfg.model.activation_checkpointing:
                loss = checkpoint(self.member_loss, m, batch["inputs"][m], batch["targets"][m], use_reentrant=False)
            else:
                loss = self.member_loss(m, batch["inputs"][m], batch["targets"][m])
            self.log(f"train/loss_member{m}", loss, on_step=True, prog_bar=False)
            total = total + loss
        self.log("train/loss", total / len(self.members), on_step=True, prog_bar=True)
        return total

    def predict_volume(self, image: torch.Tensor, lung: torch.Tensor) -> VolumePrediction:
        """The members' vote, or with `inference.member` = m that member alone (Table V's model_m)."""
        chosen = self.cfg.inference.member       # within 1..model.members: the config checks it
        members = self.members if chosen is None else [self.members[chosen - 1]]
        return predict_lesions(members, image, lung, self.cfg.inference, self.cfg.postprocessing)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.cfg.model.lr)
