"""The supervised 3D U-Net of Mueller et al. (MIScnn) as a LightningModule.

The standard 3D U-Net of seed 004 (Fig. 3), built as MONAI's BasicUNet: per level two 3x3x3
convolutions, each followed by batch norm and ReLU; 2x2x2 max pooling down, 2x2x2 transposed
convolutions of stride 2 up, skip connections by concatenation; 32 feature maps at full resolution to
512 at the lowest (four poolings). Loss Eq. (5)-(7): the multi-class Tversky loss
N - sum_c TP_c / (TP_c + a FN_c + b FP_c) (a = b = 0.5, counts summed over the batch) plus categorical
cross-entropy. Adam 1e-3; as the paper, nothing watches the validation: the learning rate x0.1 when the
training loss has not decreased for 15 epochs (min 1e-5), and early stopping when it has not for 100.
Inference: sliding windows of the patch size with half-patch overlap, averaged.

The epoch's mean training loss (averaged over ranks) steps the plateau here, at the epoch's end; the
schedule and the epoch's running sum go into checkpoints, so a resumed run steps it as the unbroken one
(Lightning skips a plateau step for an epoch a run resumed at).
"""
from __future__ import annotations

import torch
from monai.inferers import sliding_window_inference
from monai.losses import TverskyLoss
from monai.networks.nets import BasicUNet
from torch import nn

from ..inference import VolumePrediction
from .base import SegmentationModule


def z_score(image: torch.Tensor) -> torch.Tensor:
    """A volume to zero mean and unit variance, as the training patches were (per volume)."""
    return (image - image.mean()) / image.std().clamp(min=1e-6)


def tversky_cross_entropy(alpha: float = 0.5, beta: float = 0.5):
    """Eq. (5): summed Tversky losses of all classes (batch-wide counts) + mean cross-entropy. As in
    Eq. (6), alpha weighs the false negatives and beta the false positives (MONAI names them the other
    way round)."""
    tversky = TverskyLoss(to_onehot_y=True, softmax=True, alpha=beta, beta=alpha, batch=True, reduction="sum")
    cross_entropy = nn.CrossEntropyLoss()

    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return tversky(logits, labels) + cross_entropy(logits, labels[:, 0])
    return loss


class SupervisedUNet(SegmentationModule):
    def __init__(self, config: dict):
        super().__init__(config)
        u = self.cfg.unet3d
        self.net = BasicUNet(spatial_dims=3, in_channels=1, out_channels=u.classes,
                             features=(*u.channels, u.channels[0]), act="relu", norm="batch", dropout=0.0,
                             upsample="deconv")
        self.loss = tversky_cross_entropy(u.tversky_alpha, u.tversky_beta)
        self.plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        self._plateau_state: dict | None = None
        self.epoch_loss = [0.0, 0]          # this epoch's summed training loss and batches

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.loss(self.net(batch["image"]), batch["label"])
        self.log("train/loss", loss, on_step=True, prog_bar=True, batch_size=batch["image"].shape[0])
        self.epoch_loss = [self.epoch_loss[0] + loss.detach(), self.epoch_loss[1] + 1]   # no device sync per step
        return loss

    def predict_volume(self, image: torch.Tensor, lung: torch.Tensor) -> VolumePrediction:
        """Infection mask of a prepared (1, 1, D, H, W) volume: z-scored, sliding windows, argmax (the whole
        thorax is seen; the lung mask is not used)."""
        u = self.cfg.unet3d
        roi = tuple(reversed(u.patch))                      # (z, y, x) of the (x, y, z) patch
        logits = sliding_window_inference(z_score(image), roi, u.batch_size, self.net, overlap=0.5, mode="constant")
        return VolumePrediction(logits.argmax(dim=1, keepdim=True) == u.classes - 1)

    def configure_optimizers(self):
        u = self.cfg.unet3d
        optimizer = torch.optim.Adam(self.parameters(), lr=u.lr)
        self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.1,
                                                                  patience=u.plateau_patience, min_lr=u.min_lr)
        if self._plateau_state is not None:      # a resumed run (the checkpoint is read before this is made)
            self.plateau.load_state_dict(self._plateau_state)
        return optimizer

    def on_train_epoch_end(self) -> None:
        """The epoch's mean training loss: one plateau step, and `train/epoch_loss` for early stopping."""
        total, batches = self.epoch_loss
        mean = float(self.trainer.strategy.reduce(torch.as_tensor(total / max(batches, 1), device=self.device),
                                                  reduce_op="mean"))
        self.epoch_loss = [0.0, 0]
        self.log("train/epoch_loss", mean, on_step=False, on_epoch=True)
        if self.plateau is not None:
            self.plateau.step(mean)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["epoch_loss"] = [float(self.epoch_loss[0]), self.epoch_loss[1]]
        if self.plateau is not None:
            checkpoint["plateau"] = self.plateau.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._plateau_state = checkpoint.get("plateau")
        self.epoch_loss = list(checkpoint.get("epoch_loss", [0.0, 0]))
