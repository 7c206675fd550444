"""Res2Net-50-v1b (26w x 4s), the backbone Inf-Net uses (Gao et al., TPAMI 2021).

Written here rather than taken from timm: timm needs torchvision, whose wheels
for the pinned torch are CUDA builds that cannot load next to the CPU torch
wheel. Parameter names follow the official Res2Net release, so its ImageNet
state dict (res2net50_v1b_26w_4s) loads as it is.
"""
from __future__ import annotations

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_normalise(rgb: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) in [0, 1] to the statistics the ImageNet weights were trained with."""
    mean = torch.tensor(IMAGENET_MEAN, device=rgb.device, dtype=rgb.dtype).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=rgb.device, dtype=rgb.dtype).view(3, 1, 1)
    return (rgb - mean) / std


class Bottle2neck(nn.Module):
    """1x1 conv, then the input split into `scale` groups of `width` channels, each but the first passed
    through a 3x3 conv together with the previous group's output (the hierarchical residual), then 1x1."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 base_width: int = 26, scale: int = 4, first: bool = False):
        super().__init__()
        width = planes * base_width // 64
        self.conv1 = nn.Conv2d(inplanes, width * scale, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width * scale)
        self.convs = nn.ModuleList(nn.Conv2d(width, width, 3, stride, 1, bias=False) for _ in range(scale - 1))
        self.bns = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(scale - 1))
        self.pool = nn.AvgPool2d(3, stride, 1) if first else None   # the first block of a stage pools the last group
        self.conv3 = nn.Conv2d(width * scale, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample, self.width, self.scale, self.first = downsample, width, scale, first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        groups = torch.split(out, self.width, dim=1)
        outputs, previous = [], None
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            group = groups[i] if self.first or previous is None else previous + groups[i]
            previous = self.relu(bn(conv(group)))
            outputs.append(previous)
        outputs.append(self.pool(groups[-1]) if self.first else groups[-1])
        out = self.bn3(self.conv3(torch.cat(outputs, dim=1)))
        return self.relu(out + (self.downsample(x) if self.downsample is not None else x))


class Res2Net50v1b(nn.Module):
    """Features at strides 4, 8, 16, 32 (256, 512, 1024, 2048 channels) after a deep 3-conv stem."""

    def __init__(self, layers=(3, 4, 6, 3), base_width: int = 26, scale: int = 4):
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, 1, 1, bias=False))
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.inplanes = 64
        self.layer1 = self._stage(64, layers[0], 1, base_width, scale)
        self.layer2 = self._stage(128, layers[1], 2, base_width, scale)
        self.layer3 = self._stage(256, layers[2], 2, base_width, scale)
        self.layer4 = self._stage(512, layers[3], 2, base_width, scale)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def _stage(self, planes: int, blocks: int, stride: int, base_width: int, scale: int) -> nn.Sequential:
        out = planes * Bottle2neck.expansion
        downsample = nn.Sequential(nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False),
                                   nn.Conv2d(self.inplanes, out, 1, bias=False), nn.BatchNorm2d(out))
        stage = [Bottle2neck(self.inplanes, planes, stride, downsample, base_width, scale, first=True)]
        self.inplanes = out
        stage += [Bottle2neck(out, planes, 1, None, base_width, scale) for _ in range(blocks - 1)]
        return nn.Sequential(*stage)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        f1 = self.layer1(x)
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        return [f1, f2, f3, self.layer4(f3)]
