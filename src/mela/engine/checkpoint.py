"""Checkpoints written atomically (temp file + rename), so a killed run never leaves a torn file."""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch

from mela.errors import MelaError
from mela.models.feature_model import FeatureModel, ModelSpec, build_model, check_feat_dim


def save_atomic(obj: object, path: Path) -> None:
    """torch.save ``obj`` to ``path`` through a temporary file in the same folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict:
    """Load a checkpoint file; a missing or unreadable one is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise MelaError(f"checkpoint {path} does not exist; check the path or run the step that writes it")
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        raise MelaError(f"checkpoint {path} is unreadable ({type(exc).__name__}); delete it and rerun the step") \
            from exc


def model_payload(model: FeatureModel, **extra: object) -> dict:
    """What a model file holds: the spec to rebuild it, its weights, and metadata."""
    return {"spec": model.spec.to_dict(), "state_dict": model.state_dict(), **extra}


def load_feature_model(path: Path, device: torch.device) -> tuple[FeatureModel, dict]:
    """Rebuild the feature model saved at ``path`` on ``device``; returns it and the file's metadata."""
    payload = load_checkpoint(path, device)
    if "spec" not in payload or "state_dict" not in payload:
        raise MelaError(f"{path} is not a mela model file (no spec/state_dict); point to a step's model.pt")
    model = FeatureModel(ModelSpec.from_dict(payload["spec"]))
    model.load_state_dict(payload["state_dict"])
    return model.to(device), payload


def initial_model(start: Path | None, name: str, in_channels: int, feat_dim: int | None, device: torch.device,
                  log: Callable[[str], None]) -> FeatureModel:
    """The model a training step starts from: a saved one (``pretrained_model``) or a fresh ``name``."""
    if start is None:
        return build_model(name, in_channels, feat_dim)
    model, _ = load_feature_model(start, device)
    log(f"starting from {start}")
    check_feat_dim(feat_dim, model)
    return model
