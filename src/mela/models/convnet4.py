"""Conv-4: the small backbone that makes CPU-only runs (glyph data, tests) practical."""

from __future__ import annotations

import torch
from torch import nn

from mela.errors import MelaError
from mela.models.registry import check_images, init_conv_bn, register_model


class ConvNet4(nn.Module):
    """Four conv3x3-BN-ReLU-maxpool2 blocks, then global average pooling; ``feat_dim`` = ``hidden``."""

    def __init__(self, in_channels: int = 3, hidden: int = 64) -> None:
        super().__init__()
        if hidden < 1:
            raise MelaError(f"convnet4: hidden must be a positive width, got {hidden}")
        self.in_channels = in_channels
        self.feat_dim = hidden
        layers: list[nn.Module] = []
        previous = in_channels
        for _ in range(4):
            layers += [
                nn.Conv2d(previous, hidden, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(hidden),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            previous = hidden
        self.features = nn.Sequential(*layers)
        # Four 2x2 max-pools: a 16x16 input reaches 1x1.
        self.min_size = 16
        init_conv_bn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x, "convnet4", self.in_channels, self.min_size)
        return self.features(x).mean(dim=(2, 3))


@register_model("convnet4", channels_last=True, channels_last_cpu=True, min_size=16,
                description="Conv-4: four conv-BN-ReLU-pool blocks (width hidden=64); small, CPU-friendly")
def convnet4(in_channels: int = 3, hidden: int = 64) -> ConvNet4:
    """Conv-4 with ``hidden`` channels per block; ``feat_dim`` = ``hidden``."""
    return ConvNet4(in_channels, hidden)
