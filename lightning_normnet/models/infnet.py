"""Inf-Net as a LightningModule (Fan et al., IEEE TMI 2020, Sec. III-A, III-D).

Deep supervision: Eq. (5), the weighted IoU + BCE loss on S_g, S_5, S_4, S_3 (each upsampled to the
truth) plus BCE on the edge map. Multi-scale training: every batch at {0.75, 1, 1.25} x 352 (rounded to
a multiple of 32); the three scales' gradients are accumulated into one Adam step, each scale's graph
freed before the next, and clipped to +/- 0.5. The learning rate drops x0.1 every 50 epochs.
Validation: 3D labelled volumes slice by slice (the NormNet metrics) and COVID-SemiSeg's test slices
(the Inf-Net metrics).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info

from ..inference import VolumePrediction, slice_by_slice
from ..io import InputError
from ..losses import structure_loss
from ..networks.infnet import InfNet
from ..networks.res2net import imagenet_normalise
from ..scores import VolumeScore
from ..slice_metrics import slice_metrics
from .base import SegmentationModule


def load_backbone_weights(backbone: torch.nn.Module, path: str | None) -> None:
    """ImageNet weights from a local file (the official res2net50_v1b_26w_4s state dict); never downloaded."""
    if not path:
        rank_zero_info("Inf-Net backbone: random initialisation (infnet.pretrained is not set).")
        return
    if not Path(path).is_file():
        raise InputError(f"{path}: infnet.pretrained names no file.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k.removeprefix("module."): v for k, v in state.get("state_dict", state).items()
             if not k.removeprefix("module.").startswith("fc.")}
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise InputError(f"{path}: not a Res2Net-50-v1b-26w-4s state dict ({len(missing)} missing, "
                         f"{len(unexpected)} unexpected keys, e.g. {(missing or unexpected)[0]}).")
    rank_zero_info(f"Inf-Net backbone: ImageNet weights from {path}.")


def scaled_size(size: int, rate: float) -> int:
    return int(round(size * rate / 32) * 32)


class InfNetModel(SegmentationModule):
    def __init__(self, config: dict):
        super().__init__(config)
        self.net = InfNet()
        self.automatic_optimization = False

    @classmethod
    def for_training(cls, config: dict) -> "InfNetModel":
        """A new model whose backbone starts from `infnet.pretrained` (ImageNet), when it is set. Loading a
        checkpoint does not need that file."""
        model = cls(config)
        load_backbone_weights(model.net.backbone, model.cfg.infnet.pretrained)
        return model

    def loss(self, image: torch.Tensor, mask: torch.Tensor, edge: torch.Tensor) -> torch.Tensor:
        c = self.cfg.infnet
        out = self.net(image)
        seg = sum(structure_loss(m, mask, c.bce_weight, c.boundary_kernel, c.boundary_emphasis)
                  for m in out.segmentation_maps())
        return seg + F.binary_cross_entropy_with_logits(out.edge, edge)

    def training_step(self, batch: dict, batch_idx: int) -> None:
        optimizer = self.optimizers()
        optimizer.zero_grad()
        scales = list(self.cfg.infnet.scales)
        total = 0.0
        for rate in scales:
            size = scaled_size(self.cfg.infnet.train_size, rate)
            image, mask, edge = (F.interpolate(batch[k], size=(size, size), mode="bilinear", align_corners=False)
                                 for k in ("image", "mask", "edge"))
            loss = self.loss(image, mask, edge) / len(scales)
            self.manual_backward(loss)
            total += float(loss.detach())
        self.clip_gradients(optimizer, gradient_clip_val=self.cfg.infnet.clip, gradient_clip_algorithm="value")
        optimizer.step()
        self.log("train/loss", total, on_step=True, prog_bar=True, batch_size=batch["image"].shape[0])

    def on_train_epoch_end(self) -> None:
        self.lr_schedulers().step()

    def probability(self, image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """sigmoid(S_3) of normalised images at the training size, resized to `size`."""
        side = self.net(image).side3
        return torch.sigmoid(F.interpolate(side, size=size, mode="bilinear", align_corners=False))

    def predict_volume(self, image: torch.Tensor, lung: torch.Tensor) -> VolumePrediction:
        """Lesion mask of a prepared volume (H in [0, 1]), slice by slice, kept inside the lung."""
        size = self.cfg.infnet.train_size

        def segment(slices: torch.Tensor) -> torch.Tensor:
            resized = F.interpolate(slices, size=(size, size), mode="bilinear", align_corners=False)
            rgb = imagenet_normalise(resized.expand(-1, 3, -1, -1))
            return self.probability(rgb, slices.shape[-2:]) > self.cfg.infnet.threshold

        return VolumePrediction(slice_by_slice(segment, image) & lung.bool())

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0):
        """A 3D labelled volume (predicted, scored by the evaluation callback) or a COVID-SemiSeg test slice
        (scored here with Inf-Net's metrics, at the slice's own size)."""
        if "truth" not in batch:
            return super().validation_step(batch, batch_idx)
        probability = self.probability(batch["image"], (int(batch["height"][0]), int(batch["width"][0])))
        metrics = slice_metrics(probability[0, 0], batch["truth"][0, 0], self.cfg.infnet.threshold)
        return VolumeScore(batch["dataset"][0], batch["name"][0], **metrics)

    def configure_optimizers(self):
        c = self.cfg.infnet
        optimizer = torch.optim.Adam(self.parameters(), lr=c.lr)
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=c.decay_every, gamma=c.decay_rate)]
