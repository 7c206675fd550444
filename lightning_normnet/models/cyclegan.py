"""The cycle-GAN method as a LightningModule (Sec. 2.B-2.C of its paper).

X = infected slices, Y = healthy slices. G_XY makes a synthetic healthy slice, G_YX an infected one;
D_X, D_Y are 70x70 PatchGANs. Generator loss: LSGAN (D(G(.)) - 1)^2 for both directions +
lambda_cycle (10) * L1 cycle + lambda_identity (5) * L1 identity (Eq. 1-4); discriminators:
0.5 * [(D(real) - 1)^2 + D(fake)^2], the fakes drawn from a 50-image history pool. Adam 2e-4,
betas (0.5, 0.999), the learning rate constant, then linear to 0 over the last 50 of a 100-epoch schedule,
stopped at the 85th epoch as the paper's authors did.
Manual optimisation: one generator and one discriminator step per batch.
A lesion is infected - G_XY(infected) after the paper's post-processing, slice by slice.
"""
from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from torch import nn

from ..difference_postprocessing import extract_lesions
from ..inference import VolumePrediction, slice_by_slice
from ..networks.cyclegan import UNetGenerator, patch_discriminator
from .base import SegmentationModule


class ImagePool:
    """Shrivastava et al.'s history of generated images: once full, each new image is returned as it is
    or swapped with a stored one, half the time each, so D also sees older fakes. The choices come from
    Python's generator, which each training step seeds from its place; the images go into checkpoints."""

    def __init__(self, size: int):
        self.size, self.images = size, []

    def query(self, images: torch.Tensor) -> torch.Tensor:
        out = []
        for image in images.detach():
            if len(self.images) < self.size:
                self.images.append(image)
                out.append(image)
            elif random.random() < 0.5:
                i = random.randrange(self.size)
                out.append(self.images[i].to(image.device))
                self.images[i] = image
            else:
                out.append(image)
        return torch.stack(out)


def linear_decay(schedule_epochs: int, decay_epochs: int):
    """Learning-rate factor of epoch `epoch` (0-based) of a `schedule_epochs` schedule: 1, then linearly down
    over the last `decay_epochs`, the last epoch at 0 (100 and 50: 1 through epoch 49, 0.98 at epoch 50,
    0 at epoch 99)."""
    return lambda epoch: min(1.0, max(0.0, (schedule_epochs - 1 - epoch) / decay_epochs))


def lsgan(prediction: torch.Tensor, target: float) -> torch.Tensor:
    return F.mse_loss(prediction, torch.full_like(prediction, target))


class CycleGAN(SegmentationModule):
    def __init__(self, config: dict):
        super().__init__(config)
        c = self.cfg.cyclegan
        self.g_xy, self.g_yx = (UNetGenerator(base=c.base_channels, stages=c.stages) for _ in range(2))
        self.d_x, self.d_y = patch_discriminator(), patch_discriminator()
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.normal_(module.weight, 0.0, c.init_std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        self.pool_x, self.pool_y = ImagePool(c.pool_size), ImagePool(c.pool_size)
        self.automatic_optimization = False

    def generator_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict, torch.Tensor, torch.Tensor]:
        c = self.cfg.cyclegan
        fake_y, fake_x = self.g_xy(x), self.g_yx(y)
        adversarial = lsgan(self.d_y(fake_y)[-1], 1.0) + lsgan(self.d_x(fake_x)[-1], 1.0)
        cycle = F.l1_loss(self.g_yx(fake_y), x) + F.l1_loss(self.g_xy(fake_x), y)
        identity = F.l1_loss(self.g_xy(y), y) + F.l1_loss(self.g_yx(x), x)
        total = adversarial + c.lambda_cycle * cycle + c.lambda_identity * identity
        return total, {"adversarial": adversarial, "cycle": cycle, "identity": identity}, fake_x, fake_y

    def discriminator_loss(self, real: torch.Tensor, fake: torch.Tensor, discriminator) -> torch.Tensor:
        return 0.5 * (lsgan(discriminator(real)[-1], 1.0) + lsgan(discriminator(fake)[-1], 0.0))

    def training_step(self, batch: dict, batch_idx: int) -> None:
        opt_g, opt_d = self.optimizers()
        x, y = batch["x"], batch["y"]
        discriminators = list(self.d_x.parameters()) + list(self.d_y.parameters())
        for p in discriminators:
            p.requires_grad_(False)
        loss_g, parts, fake_x, fake_y = self.generator_loss(x, y)
        opt_g.zero_grad()
        self.manual_backward(loss_g)
        opt_g.step()
        for p in discriminators:
            p.requires_grad_(True)
        loss_d = (self.discriminator_loss(y, self.pool_y.query(fake_y), self.d_y)
                  + self.discriminator_loss(x, self.pool_x.query(fake_x), self.d_x))
        opt_d.zero_grad()
        self.manual_backward(loss_d)
        opt_d.step()
        self.log_dict({"train/loss_g": loss_g, "train/loss_d": loss_d, **{f"train/{k}": v for k, v in parts.items()}},
                      on_step=True, prog_bar=False, batch_size=x.shape[0])

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["image_pools"] = [[image.cpu() for image in pool.images] for pool in (self.pool_x, self.pool_y)]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        for pool, images in zip((self.pool_x, self.pool_y), checkpoint.get("image_pools", ([], []))):
            pool.images = list(images)

    def on_train_epoch_end(self) -> None:
        for scheduler in self.lr_schedulers():
            scheduler.step()

    def synthetic_healthy(self, slices: torch.Tensor) -> torch.Tensor:
        """G_XY of [-1, 1] slices of any size (padded with -1, air, to a multiple of 256)."""
        multiple = self.g_xy.multiple
        h, w = slices.shape[-2:]
        pad_h, pad_w = -h % multiple, -w % multiple
        padded = F.pad(slices, (0, pad_w, 0, pad_h), value=-1.0)
        return self.g_xy(padded)[..., :h, :w]

    def predict_volume(self, image: torch.Tensor, lung: torch.Tensor) -> VolumePrediction:
        c = self.cfg.cyclegan

        def segment(slices: torch.Tensor, lung_slices: torch.Tensor) -> torch.Tensor:
            infected = 2 * slices - 1
            return extract_lesions(infected, self.synthetic_healthy(infected), lung_slices, c.median_kernel,
                                   c.clustering, c.gaussian_size, c.gaussian_sigma)

        return VolumePrediction(slice_by_slice(segment, image, lung.bool(), chunk=c.batch_size * 4))

    def configure_optimizers(self):
        c = self.cfg.cyclegan
        generators = torch.optim.Adam(list(self.g_xy.parameters()) + list(self.g_yx.parameters()), lr=c.lr,
                                      betas=tuple(c.betas))
        discriminators = torch.optim.Adam(list(self.d_x.parameters()) + list(self.d_y.parameters()), lr=c.lr,
                                          betas=tuple(c.betas))
        factor = linear_decay(c.schedule_epochs, c.decay_epochs)
        schedulers = [torch.optim.lr_scheduler.LambdaLR(o, factor) for o in (generators, discriminators)]
        return [generators, discriminators], schedulers
