"""The feature map every step trains, saves and loads: a backbone, optionally topped by a residual MLP.

A model is described by a small JSON-able spec stored in every checkpoint, so a
later step rebuilds it without the user repeating the architecture.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from mela.errors import MelaError
from mela.models.mlp import ResidualMLP
from mela.models.registry import create_model


@dataclass(frozen=True)
class ModelSpec:
    """What to build: backbone name and options, and whether a residual MLP sits on top."""

    backbone: str
    backbone_kwargs: dict = field(default_factory=dict)
    residual_mlp: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelSpec:
        return cls(data["backbone"], dict(data.get("backbone_kwargs", {})), bool(data.get("residual_mlp", False)))


class FeatureModel(nn.Module):
    """images -> features; with ``residual_mlp`` the backbone's L2-normalised features go through the MLP.

    The MLP variant is the fine_tune step's model: only the MLP is trained, the
    backbone stays frozen (see :meth:`freeze_backbone`).
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = create_model(spec.backbone, **spec.backbone_kwargs)
        self.feat_dim: int = int(self.backbone.feat_dim)
        self.mlp = ResidualMLP(self.feat_dim) if spec.residual_mlp else None
        # What its input images must look like (a mela.data.preprocessing.Preprocessing), set when the model is
        # loaded from a file that records it; None for a fresh model.
        self.preprocessing: object | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)
        if self.mlp is not None:
            features = self.mlp(F.normalize(features, dim=-1))
        return features

    def freeze_backbone(self) -> None:
        """Stop gradients into the backbone and keep its BatchNorm statistics fixed."""
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.backbone.eval()

    def train(self, mode: bool = True) -> FeatureModel:
        super().train(mode)
        if self.mlp is not None and not any(p.requires_grad for p in self.backbone.parameters()):
            self.backbone.eval()
        return self


class Classifier(nn.Module):
    """A feature model with one linear head per label set (one head unless multi-head)."""

    def __init__(self, features: FeatureModel, n_outputs: list[int]) -> None:
        super().__init__()
        self.features = features
        self.heads = nn.ModuleList(nn.Linear(features.feat_dim, n) for n in n_outputs)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        z = self.features(x)
        return [head(z) for head in self.heads]


def check_feat_dim(feat_dim: int | None, model: FeatureModel) -> None:
    """``feat_dim`` follows from the architecture; a contradicting value is a one-line error."""
    if feat_dim is not None and int(feat_dim) != model.feat_dim:
        raise MelaError(f"feat_dim={feat_dim} contradicts model {model.spec.backbone}, whose features have "
                        f"{model.feat_dim} dimensions; drop feat_dim or set it to {model.feat_dim}")


def build_model(name: str, in_channels: int = 3, feat_dim: int | None = None,
                residual_mlp: bool = False, backbone_options: Mapping[str, object] | None = None) -> FeatureModel:
    """A fresh feature model ``name`` for ``in_channels``-channel images; ``feat_dim``, when given, must agree.

    ``backbone_options`` (a config's ``model_options``) go to the backbone's factory besides ``in_channels``;
    an option it does not take is a one-line error. They are stored in the spec, so a saved model rebuilds.
    """
    options = dict(backbone_options or {})
    if "in_channels" in options:
        raise MelaError("model_options cannot set in_channels: it follows from the data's images")
    model = FeatureModel(ModelSpec(name, {"in_channels": in_channels, **options}, residual_mlp))
    check_feat_dim(feat_dim, model)
    return model
