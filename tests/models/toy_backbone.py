"""A whole backbone in one file: the worked example of CONTRIBUTING.md's "Add a model".

Importing this module is all it takes: ``register_model`` records the factory and the facts other code reads
(``mela models``'s description, ``channels_last=auto``'s choice, the smallest input), so ``model=toy`` then works
wherever a model name does. A backbone shipped with mela lives in ``src/mela/models/<name>.py`` and is named in
``registry._BUILTIN_MODULES`` so that it is imported before any lookup.
"""

from __future__ import annotations

import torch
from torch import nn

from mela.models.registry import check_images, init_conv_bn, register_model


class ToyNet(nn.Module):
    """conv3x3-BN-ReLU-maxpool2, then global average pooling: (B, C, H, W) -> (B, ``width``)."""

    def __init__(self, in_channels: int = 3, width: int = 8) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.feat_dim = width  # every backbone says how many features it returns
        self.min_size = 2
        self.body = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(2))
        init_conv_bn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x, "toy", self.in_channels, self.min_size)
        return self.body(x).mean(dim=(2, 3))  # adaptive pooling: any input size from min_size up works


@register_model("toy", description="one conv block, for tests and as the example backbone",
                channels_last=True, min_size=2)
def toy(in_channels: int = 3, width: int = 8) -> ToyNet:
    """One conv3x3-BN-ReLU-pool block of ``width`` channels; ``feat_dim`` = ``width``."""
    return ToyNet(in_channels, width)
