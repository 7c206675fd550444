"""Inf-Net (Fan et al., IEEE TMI 2020, Sec. III-A): Res2Net features, a parallel partial decoder for a
coarse global map S_g, edge attention on the low-level features, and three cascaded reverse-attention
modules refining S_g from the deepest features upwards.

Features: f2 = layer1 (stride 4, low-level, edges), f3, f4, f5 = layers 2-4 (strides 8, 16, 32).
Every output is a logit map at the input's size: S_g, S_5, S_4, S_3 (the prediction) and the edge map.

The layers are the authors' (DengPingFan/Inf-Net, Code/model_lung_infection/InfNet_Res2Net.py), where the
paper gives no detail: their BasicConv2d is a convolution and batch norm without ReLU, used so in the
partial decoder, the edge branch and the reverse attentions' 1x1 reductions; a ReLU follows only the
reverse attentions' middle convolutions and the RFB's sum. The deepest reverse attention has 256 channels
and 5x5 convolutions, the others 64 and 3x3; each ends in a convolution with batch norm (1x1 for the
deepest, 3x3 for the others), as does the edge head.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .res2net import Res2Net50v1b


def conv_bn(cin: int, cout: int, kernel=3, padding=None, dilation: int = 1, relu: bool = True) -> nn.Sequential:
    kernel = kernel if isinstance(kernel, tuple) else (kernel, kernel)
    padding = padding if padding is not None else tuple(dilation * (k // 2) for k in kernel)
    layers = [nn.Conv2d(cin, cout, kernel, padding=padding, dilation=dilation, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class ReceptiveField(nn.Module):
    """RFB: four branches of growing receptive field (1, then (1xk, kx1, dilated 3x3) for k = 3, 5, 7),
    concatenated, fused and added to a 1x1 shortcut; reduces a feature map to `cout` channels."""

    def __init__(self, cin: int, cout: int = 32):
        super().__init__()
        self.branches = nn.ModuleList([conv_bn(cin, cout, 1, relu=False)] + [
            nn.Sequential(conv_bn(cin, cout, 1, relu=False), conv_bn(cout, cout, (1, k), relu=False),
                          conv_bn(cout, cout, (k, 1), relu=False), conv_bn(cout, cout, 3, dilation=k, relu=False))
            for k in (3, 5, 7)])
        self.fuse = conv_bn(4 * cout, cout, 3, relu=False)
        self.shortcut = conv_bn(cin, cout, 1, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fuse(torch.cat([b(x) for b in self.branches], 1)) + self.shortcut(x))


def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class PartialDecoder(nn.Module):
    """PPD: the three high-level features multiplied into each other from coarse to fine, then concatenated
    upwards; returns S_g at the resolution of f3."""

    def __init__(self, c: int = 32):
        super().__init__()
        self.up5_4, self.up5_3, self.up4_3 = (conv_bn(c, c, relu=False) for _ in range(3))
        self.up5_cat, self.up4_cat = conv_bn(c, c, relu=False), conv_bn(2 * c, 2 * c, relu=False)
        self.cat4, self.cat3 = conv_bn(2 * c, 2 * c, relu=False), conv_bn(3 * c, 3 * c, relu=False)
        self.head = nn.Sequential(conv_bn(3 * c, 3 * c, relu=False), nn.Conv2d(3 * c, 1, 1))

    def forward(self, f3: torch.Tensor, f4: torch.Tensor, f5: torch.Tensor) -> torch.Tensor:
        f4_1 = self.up5_4(_up(f5, f4)) * f4
        f3_1 = self.up5_3(_up(f5, f3)) * self.up4_3(_up(f4, f3)) * f3
        f4_2 = self.cat4(torch.cat([f4_1, self.up5_cat(_up(f5, f4))], 1))
        f3_2 = self.cat3(torch.cat([f3_1, self.up4_cat(_up(f4_2, f3))], 1))
        return self.head(f3_2)


class ReverseAttention(nn.Module):
    """Eq. (2)-(3): the feature weighted by A = 1 - sigmoid(up(S_{i+1})) (erasing what is already found),
    reduced to `c` channels, concatenated with the downsampled edge features, `convs` convolutions of
    `kernel` with ReLU, and a 1-channel residual (a `head`-sized convolution with batch norm) added to
    up(S_{i+1})."""

    def __init__(self, cin: int, c: int, kernel: int, convs: int, head: int, edge_channels: int = 64):
        super().__init__()
        self.reduce = conv_bn(cin, c, 1, relu=False)
        middle = [conv_bn(c + edge_channels, c, kernel)] + [conv_bn(c, c, kernel) for _ in range(convs - 1)]
        self.refine = nn.Sequential(*middle, conv_bn(c, 1, head, relu=False))

    def forward(self, feature: torch.Tensor, coarser: torch.Tensor, edge: torch.Tensor) -> torch.Tensor:
        guide = _up(coarser, feature)
        attended = feature * (1 - torch.sigmoid(guide))          # broadcast over the channels
        x = torch.cat([self.reduce(attended), _up(edge, feature)], 1)
        return self.refine(x) + guide


@dataclass
class InfNetOutput:
    global_map: torch.Tensor   # S_g
    side5: torch.Tensor        # S_5
    side4: torch.Tensor        # S_4
    side3: torch.Tensor        # S_3: the prediction
    edge: torch.Tensor         # S_e

    def segmentation_maps(self) -> list[torch.Tensor]:
        return [self.global_map, self.side5, self.side4, self.side3]


class InfNet(nn.Module):
    def __init__(self, channels: int = 32):
        super().__init__()
        self.backbone = Res2Net50v1b()
        self.rfb3, self.rfb4, self.rfb5 = (ReceptiveField(c, channels) for c in (512, 1024, 2048))
        self.decoder = PartialDecoder(channels)
        self.edge_features = nn.Sequential(conv_bn(256, 64, 1, relu=False), conv_bn(64, 64, relu=False),
                                           conv_bn(64, 64, relu=False))
        self.edge_head = conv_bn(64, 1, 3, relu=False)
        self.ra5 = ReverseAttention(2048, c=256, kernel=5, convs=3, head=1)
        self.ra4 = ReverseAttention(1024, c=64, kernel=3, convs=2, head=3)
        self.ra3 = ReverseAttention(512, c=64, kernel=3, convs=2, head=3)

    def forward(self, x: torch.Tensor) -> InfNetOutput:
        f2, f3, f4, f5 = self.backbone(x)
        edge = self.edge_features(f2)
        global_map = self.decoder(self.rfb3(f3), self.rfb4(f4), self.rfb5(f5))
        s5 = self.ra5(f5, global_map, edge)
        s4 = self.ra4(f4, s5, edge)
        s3 = self.ra3(f3, s4, edge)
        return InfNetOutput(*(_up(m, x) for m in (global_map, s5, s4, s3, self.edge_head(edge))))
