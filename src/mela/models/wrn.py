"""Wide ResNet 28-10 (Zagoruyko & Komodakis, 2016), the wide few-shot backbone.

Pre-activation blocks (BN-ReLU before each conv) in three groups of four, widths
160 / 320 / 640 with strides 1 / 2 / 2 after a 16-channel 3x3 stem.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mela.errors import MelaError
from mela.models.registry import check_images, init_conv_bn, register_model


class WideBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3, BN-ReLU-dropout-conv3x3, plus a shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.dropout = dropout
        self.projection = None
        if stride != 1 or in_channels != out_channels:
            self.projection = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = F.relu(self.bn1(x))
        out = self.conv1(activated)
        out = F.dropout(F.relu(self.bn2(out)), p=self.dropout, training=self.training)
        out = self.conv2(out)
        # A projection shortcut sees the activated input, as in the original WRN.
        shortcut = x if self.projection is None else self.projection(activated)
        return out + shortcut


class WideResNet(nn.Module):
    """WRN-depth-width feature extractor: (B, C, H, W) images to (B, 64 * width) features."""

    def __init__(self, depth: int = 28, width: int = 10, in_channels: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise MelaError(f"wide resnet depth must be 6n+4 (10, 16, 22, 28, ...), got {depth}")
        if not 0.0 <= dropout < 1.0:
            raise MelaError(f"wide resnet dropout must be in [0, 1), got {dropout}")
        self.name = f"wrn_{depth}_{width}"
        self.in_channels = in_channels
        per_group = (depth - 4) // 6
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        blocks = []
        previous = 16
        for channels, stride in ((16 * width, 1), (32 * width, 2), (64 * width, 2)):
            for index in range(per_group):
                blocks.append(WideBlock(previous, channels, stride if index == 0 else 1, dropout))
                previous = channels
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(previous)
        self.feat_dim = previous
        # Padded stride-2 convolutions never shrink a map below 1x1.
        self.min_size = 1
        init_conv_bn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x, self.name, self.in_channels, self.min_size)
        out = F.relu(self.bn(self.blocks(self.stem(x))))
        return out.mean(dim=(2, 3))


@register_model("wrn_28_10", channels_last=True, min_size=1,
                description="Wide ResNet 28-10 (widths 160-320-640); 640-dim")
def wrn_28_10(in_channels: int = 3, dropout: float = 0.0) -> WideResNet:
    """WRN-28-10: widths 160 / 320 / 640, strides 1 / 2 / 2; ``feat_dim`` 640."""
    return WideResNet(28, 10, in_channels, dropout)
