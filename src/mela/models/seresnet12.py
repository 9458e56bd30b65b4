"""ResNet-12 with a squeeze-and-excitation gate in every block.

Same blocks as :mod:`mela.models.resnet12`, switched on through ``se_reduction``,
so the two backbones cannot drift apart.
"""

from __future__ import annotations

from mela.models.registry import register_model
from mela.models.resnet12 import ResNet12


@register_model("seresnet12", channels_last=True, min_size=16,
                description="ResNet-12 with a squeeze-and-excitation gate in every block; 640-dim")
def seresnet12(
    in_channels: int = 3,
    drop_rate: float = 0.1,
    dropblock_size: int = 5,
    avg_pool: bool = True,
    se_reduction: int = 16,
) -> ResNet12:
    """SE-ResNet-12: channels (64, 160, 320, 640), an SE gate before each residual sum; ``feat_dim`` 640."""
    return ResNet12(
        in_channels,
        drop_rate=drop_rate,
        dropblock_size=dropblock_size,
        avg_pool=avg_pool,
        se_reduction=se_reduction,
        name="seresnet12",
    )
