"""Residual MLP that fine-tuning stacks on top of frozen backbone features.

Three ``Linear(dim, dim)`` layers with ReLU between them; their output is added to
the input and the sum layer-normalised. The layers keep PyTorch's default
initialisation on purpose, so the block starts as LayerNorm(input + a small random
map) rather than as an exact identity.
"""

from __future__ import annotations

import torch
from torch import nn

from mela.errors import MelaError
from mela.models.registry import register_model


class ResidualMLP(nn.Module):
    """``LayerNorm(x + fc3(relu(fc2(relu(fc1(x))))))`` on (B, dim) features; ``feat_dim`` = ``dim``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim < 1:
            raise MelaError(f"residual_mlp: dim must be a positive feature size, got {dim}")
        self.feat_dim = dim
        self.fc1 = nn.Linear(dim, dim)
        self.fc2 = nn.Linear(dim, dim)
        self.fc3 = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.feat_dim:
            raise MelaError(
                f"residual_mlp was built for {self.feat_dim}-dim features but got shape {tuple(x.shape)}; "
                f"create it with dim={x.shape[-1]}"
            )
        out = self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))
        return self.norm(x + out)


@register_model("residual_mlp", description="residual 3-layer MLP on features (fine_tune's head), not a backbone")
def residual_mlp(dim: int) -> ResidualMLP:
    """Residual MLP over ``dim``-dim features; ``feat_dim`` = ``dim``."""
    return ResidualMLP(dim)
