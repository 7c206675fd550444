"""The cycle-GAN method's networks (Sec. 2.B of its paper).

Generator: a U-Net of 8 stages. Encoder: 3x3 convolutions of stride 2 (no pooling), 64 channels
doubling over the first four stages, then 512; instance normalisation after every convolution but the
innermost (on a 1x1 map it would zero every feature) and the output; every encoder map is
concatenated to its decoder counterpart. Decoder: x2 upsampling and a 3x3 convolution per stage; a tanh
output in [-1, 1]. Inputs must be a multiple of 256 on each side. The 70x70 PatchGAN discriminator is
MONAI's (C64-C128-C256 stride 2, C512 stride 1, instance norm, LeakyReLU 0.2).
"""
from __future__ import annotations

import torch
from monai.networks.nets import PatchDiscriminator
from torch import nn


def _block(cin: int, cout: int, stride: int, norm: bool, activation: nn.Module) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, 3, stride, 1, bias=not norm)]
    return nn.Sequential(*layers, *([nn.InstanceNorm2d(cout)] if norm else []), activation)


class UNetGenerator(nn.Module):
    def __init__(self, channels: int = 1, base: int = 64, stages: int = 8, widest: int = 512):
        super().__init__()
        widths = [min(base * 2 ** i, widest) for i in range(stages)]            # 64 128 256 512 512 512 512 512
        self.encoder = nn.ModuleList(
            _block(cin, cout, 2, norm=i < stages - 1, activation=nn.LeakyReLU(0.2, inplace=True))
            for i, (cin, cout) in enumerate(zip([channels] + widths[:-1], widths)))
        self.decoder = nn.ModuleList(
            _block(widths[i + 1] if i == stages - 2 else widths[i + 1] * 2, widths[i], 1, norm=True,
                   activation=nn.ReLU(inplace=True))
            for i in range(stages - 1))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.head = nn.Sequential(nn.Conv2d(widths[0] * 2, channels, 3, 1, 1), nn.Tanh())
        self.multiple = 2 ** stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % self.multiple or x.shape[-2] % self.multiple:
            raise ValueError(f"generator input {tuple(x.shape[-2:])} must be a multiple of {self.multiple}")
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        for i in reversed(range(len(self.decoder))):          # stage i restores the size of skips[i]
            x = self.decoder[i](self.up(x))
            x = torch.cat([x, skips[i]], dim=1)
        return self.head(self.up(x))


def patch_discriminator(channels: int = 1) -> PatchDiscriminator:
    return PatchDiscriminator(spatial_dims=2, channels=64, in_channels=channels, out_channels=1, num_layers_d=3,
                              kernel_size=4, norm="INSTANCE", last_conv_kernel_size=4)
