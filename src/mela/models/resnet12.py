"""ResNet-12, the standard few-shot backbone (MetaOptNet / RFS line of work).

Four residual stages of three 3x3 convolutions (channels 64, 160, 320, 640), each
followed by a 2x2 max-pool; dropout regularises the first two stages and DropBlock
the last two. The squeeze-and-excitation variant (``seresnet12``) is the same
network with ``se_reduction`` set, so both share the blocks below.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mela.errors import MelaError
from mela.models.registry import check_images, init_conv_bn, register_model


class DropBlock(nn.Module):
    """Drop contiguous square regions of each feature map (Ghiasi et al., 2018).

    Plain dropout barely regularises conv features because neighbours carry the
    same information; dropping whole blocks does. The block shrinks to the map when
    the map is smaller than ``block_size`` (small inputs). Identity in eval mode.
    """

    def __init__(self, drop_rate: float, block_size: int) -> None:
        super().__init__()
        if not 0.0 <= drop_rate < 1.0:
            raise MelaError(f"drop_rate must be in [0, 1), got {drop_rate}")
        if block_size < 1:
            raise MelaError(f"dropblock_size must be at least 1, got {block_size}")
        self.drop_rate = drop_rate
        self.block_size = block_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_rate == 0.0:
            return x
        batch, channels, height, width = x.shape
        size = min(self.block_size, height, width)
        valid_h, valid_w = height - size + 1, width - size + 1
        # Seed rate chosen so the expected dropped fraction is drop_rate.
        gamma = self.drop_rate / size**2 * (height * width) / (valid_h * valid_w)
        seeds = torch.bernoulli(torch.full((batch, channels, valid_h, valid_w), min(gamma, 1.0), device=x.device))
        # Each seed marks the top-left corner of a dropped size x size block.
        blocks = F.max_pool2d(F.pad(seeds, (size - 1,) * 4), kernel_size=size, stride=1)
        keep = 1.0 - blocks
        scale = keep.numel() / keep.sum().clamp(min=1.0)
        return x * keep.to(x.dtype) * scale.to(x.dtype)


class SqueezeExcite(nn.Module):
    """Reweight channels by a gate computed from their global average (Hu et al., 2018)."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3))))))
        return x * gate[:, :, None, None]


def _conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)


class ResNet12Block(nn.Module):
    """Three conv3x3-BN-LeakyReLU layers, a 1x1 projection shortcut, then a 2x2 max-pool."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        drop_rate: float,
        use_dropblock: bool,
        dropblock_size: int,
        se_reduction: int | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv3 = _conv3x3(out_channels, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.se = SqueezeExcite(out_channels, se_reduction) if se_reduction else None
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False), nn.BatchNorm2d(out_channels)
        )
        self.drop_rate = drop_rate
        self.dropblock = DropBlock(drop_rate, dropblock_size) if use_dropblock and drop_rate > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.leaky_relu(self.bn1(self.conv1(x)), 0.1)
        out = F.leaky_relu(self.bn2(self.conv2(out)), 0.1)
        out = self.bn3(self.conv3(out))
        if self.se is not None:
            out = self.se(out)
        out = F.leaky_relu(out + self.shortcut(x), 0.1)
        out = F.max_pool2d(out, 2)
        if self.dropblock is not None:
            return self.dropblock(out)
        return F.dropout(out, p=self.drop_rate, training=self.training)


class ResNet12(nn.Module):
    """ResNet-12 feature extractor: (B, C, H, W) images to (B, 640) features.

    ``avg_pool=False`` pools with a global max instead of an average, keeping the
    flat (B, feat_dim) output every backbone promises.
    """

    def __init__(
        self,
        in_channels: int = 3,
        channels: tuple[int, ...] = (64, 160, 320, 640),
        drop_rate: float = 0.1,
        dropblock_size: int = 5,
        avg_pool: bool = True,
        se_reduction: int | None = None,
        name: str = "resnet12",
    ) -> None:
        super().__init__()
        if not 0.0 <= drop_rate < 1.0:
            raise MelaError(f"{name}: drop_rate must be in [0, 1), got {drop_rate}")
        self.name = name
        self.in_channels = in_channels
        self.avg_pool = avg_pool
        stages = []
        previous = in_channels
        for index, width in enumerate(channels):
            # DropBlock on the two deepest stages, plain dropout before them.
            use_dropblock = index >= len(channels) - 2
            stages.append(ResNet12Block(previous, width, drop_rate, use_dropblock, dropblock_size, se_reduction))
            previous = width
        self.stages = nn.Sequential(*stages)
        self.feat_dim = previous
        # One 2x2 max-pool per stage: a 2**stages input reaches 1x1, anything smaller reaches 0.
        self.min_size = 2 ** len(channels)
        init_conv_bn(self, "leaky_relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x, self.name, self.in_channels, self.min_size)
        out = self.stages(x)
        return out.mean(dim=(2, 3)) if self.avg_pool else out.amax(dim=(2, 3))



@register_model("resnet12", channels_last=True, min_size=16,
                description="ResNet-12 (64-160-320-640, DropBlock), the standard few-shot backbone; 640-dim")
def resnet12(in_channels: int = 3, drop_rate: float = 0.1, dropblock_size: int = 5, avg_pool: bool = True) -> ResNet12:
    """ResNet-12 with channels (64, 160, 320, 640); ``feat_dim`` 640."""
    return ResNet12(in_channels, drop_rate=drop_rate, dropblock_size=dropblock_size, avg_pool=avg_pool)
