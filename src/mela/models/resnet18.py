"""ResNet-18 adapted to small images (CIFAR-style stem).

The ImageNet stem (7x7 stride-2 conv and a max-pool) would shrink an 84-px image
4x before the first block; few-shot work uses a 3x3 stride-1 stem with no
max-pool instead, keeping the four stages of two BasicBlocks (64..512 channels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mela.models.registry import check_images, init_conv_bn, register_model


class BasicBlock(nn.Module):
    """Two conv3x3-BN layers with an identity or 1x1-projection shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 feature extractor: (B, C, H, W) images to (B, 512) features."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True)
        )
        blocks = []
        previous = 64
        for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [BasicBlock(previous, width, stride), BasicBlock(width, width, 1)]
            previous = width
        self.blocks = nn.Sequential(*blocks)
        self.feat_dim = previous
        # Padded stride-2 convolutions never shrink a map below 1x1.
        self.min_size = 1
        init_conv_bn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x, "resnet18", self.in_channels, self.min_size)
        return self.blocks(self.stem(x)).mean(dim=(2, 3))


@register_model("resnet18", channels_last=True, min_size=1,
                description="ResNet-18 with a CIFAR-style 3x3 stride-1 stem; 512-dim")
def resnet18(in_channels: int = 3) -> ResNet18:
    """ResNet-18 (BasicBlock, [2, 2, 2, 2]) with a 3x3 stride-1 stem; ``feat_dim`` 512."""
    return ResNet18(in_channels)
