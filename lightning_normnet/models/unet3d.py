"""The supervised 3D U-Net of Mueller et al. (MIScnn) as a LightningModule.

A standard 3D U-Net (MONAI): 32 feature maps at full resolution to 512 at the lowest, batch norm,
stride-2 downsampling, transposed-convolution upsampling; loss Eq. (5)-(7): the multi-class Tversky
loss N - sum_c TP_c / (TP_c + a FN_c + b FP_c) (a = b = 0.5, counts summed over the batch) plus
categorical cross-entropy; Adam 1e-3, the learning rate x0.1 when the validation DSC has not risen for
15 epochs (min 1e-5) and early stopping after 100 (the authors monitored the training loss). Inference:
sliding windows of the patch size with half-patch overlap, averaged.

The plateau schedule is stepped here, at the end of each validation of the fit, with rank 0's DSC on
every rank, and its state goes into checkpoints: Lightning would step it only on the ranks that logged
the DSC, and not at all for the epoch a run resumed from an epoch-end checkpoint.
"""
from __future__ import annotations

import torch
from monai.inferers import sliding_window_inference
from monai.losses import TverskyLoss
from monai.networks.nets import UNet
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
        self.net = UNet(spatial_dims=3, in_channels=1, out_channels=u.classes, channels=tuple(u.channels),
                        strides=(2,) * (len(u.channels) - 1), num_res_units=0, norm="BATCH")
        self.loss = tversky_cross_entropy(u.tversky_alpha, u.tversky_beta)
        self.plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        self._plateau_state: dict | None = None

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.loss(self.net(batch["image"]), batch["label"])
        self.log("train/loss", loss, on_step=True, prog_bar=True, batch_size=batch["image"].shape[0])
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
        self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.1,
                                                                  patience=u.plateau_patience, min_lr=u.min_lr)
        if self._plateau_state is not None:      # a resumed run (the checkpoint is read before this is made)
            self.plateau.load_state_dict(self._plateau_state)
        return optimizer

    def on_validation_end(self) -> None:
        """One plateau step per validation of the fit: the patience counts validations."""
        trainer = self.trainer
        if trainer.sanity_checking or trainer.state.fn != "fit" or self.plateau is None:
            return
        score = trainer.callback_metrics.get("val/dsc")          # logged by rank 0 only
        score = trainer.strategy.broadcast(None if score is None else float(score), src=0)
        if score is not None:
            self.plateau.step(score)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.plateau is not None:
            checkpoint["plateau"] = self.plateau.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._plateau_state = checkpoint.get("plateau")
