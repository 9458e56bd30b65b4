"""Checkpoints written atomically (temp file + rename) and read without running code.

A killed run never leaves a torn file, a full disk or unwritable folder is one
line naming the path, and a checkpoint is loaded with ``weights_only=True``: a
file from elsewhere can hold tensors and plain data, never objects whose
unpickling runs code.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from mela.errors import MelaError
from mela.models.feature_model import FeatureModel, ModelSpec, build_model, check_feat_dim

# What torch.load's RuntimeErrors say when the file itself is damaged (as opposed to CUDA, memory, ...).
_DAMAGED = re.compile(r"PytorchStreamReader|zip archive|central directory|corrupt|Invalid magic number|unexpected EOF"
                      r"|file read failed|failed finding", re.IGNORECASE)


def save_atomic(obj: object, path: Path) -> None:
    """torch.save ``obj`` to ``path`` through a temporary file in the same folder, removed if anything fails.

    Written through a Python file handle so that a full disk is an OSError (ENOSPC),
    not an opaque error of torch's zip writer.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        _remove_quietly(tmp)
        os_error = _os_error_in(exc)
        if os_error is None:
            raise
        raise MelaError(f"cannot write {path} ({os_error.strerror or os_error}); check free disk space and that "
                        f"{path.parent} is a writable folder") from exc


def _os_error_in(exc: BaseException | None) -> OSError | None:
    """The OSError behind ``exc``: itself, or the cause torch's zip writer wraps in a RuntimeError."""
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, OSError):
            return exc
        if not isinstance(exc, RuntimeError):
            return None
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def _refused_global(message: str) -> str | None:
    """The Python object a weights_only refusal names, e.g. ``posix.system`` (None if it names none)."""
    found = re.search(r"(?:GLOBAL|Unsupported class) ([\w.]+)", message)
    return found.group(1) if found else None


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict:
    """Load a checkpoint file with ``weights_only=True``; missing, damaged or unsafe files are one-line errors.

    Errors not about the file (CUDA out of memory, a bug) propagate unchanged.
    """
    path = Path(path)
    if not path.is_file():
        raise MelaError(f"checkpoint {path} does not exist; check the path or run the step that writes it")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        culprit = _refused_global(str(exc))
        if culprit:
            raise MelaError(f"checkpoint {path} refers to {culprit}; mela only loads tensors and plain data "
                            "(weights_only), so this file was not written by mela or was tampered with: "
                            "use a mela model file") from None
        raise _damaged(path, exc) from None
    except (EOFError, zipfile.BadZipFile, KeyError, UnicodeDecodeError) as exc:
        raise _damaged(path, exc) from exc
    except RuntimeError as exc:  # CUDA out of memory and the like are not the file's fault: they propagate
        if _DAMAGED.search(str(exc)):
            raise _damaged(path, exc) from exc
        raise
    except OSError as exc:
        raise MelaError(f"cannot read checkpoint {path} ({exc.strerror or exc}); check its permissions") from exc


def _damaged(path: Path, exc: BaseException) -> MelaError:
    return MelaError(f"checkpoint {path} is unreadable ({type(exc).__name__}); it is damaged or not a torch file: "
                     "delete it and rerun the step that writes it")


def model_payload(model: FeatureModel, **extra: object) -> dict:
    """What a model file holds: the spec to rebuild it, its weights, and metadata."""
    return {"spec": model.spec.to_dict(), "state_dict": model.state_dict(), **extra}


def state_dict_mismatch(expected: Mapping[str, torch.Tensor], saved: Mapping[str, object]) -> str | None:
    """What keeps ``saved`` from loading into a model whose state dict is ``expected`` (None if it fits)."""
    problems = []
    missing = [k for k in expected if k not in saved]
    unexpected = [k for k in saved if k not in expected]
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    for key, want in expected.items():
        have = saved.get(key)
        if isinstance(have, torch.Tensor) and have.shape != want.shape:
            problems.append(f"{key} is {tuple(have.shape)}, the spec needs {tuple(want.shape)}")
            break
        if key in saved and not isinstance(have, torch.Tensor):
            problems.append(f"{key} is a {type(have).__name__}, not a tensor")
            break
    return "; ".join(problems) or None


def load_feature_model(path: Path, device: torch.device) -> tuple[FeatureModel, dict]:
    """Rebuild the feature model saved at ``path`` on ``device``; returns it and the file's metadata."""
    payload = load_checkpoint(path, device)
    if not isinstance(payload, dict) or "spec" not in payload or "state_dict" not in payload:
        raise MelaError(f"{path} is not a mela model file (no spec/state_dict); point to a step's model.pt")
    try:
        spec = ModelSpec.from_dict(payload["spec"])
        model = FeatureModel(spec)
    except MelaError as exc:
        raise MelaError(f"{path}: its model spec is unusable ({exc})") from exc
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise MelaError(f"{path}: its model spec {payload['spec']!r} is unusable ({type(exc).__name__}: {exc}); "
                        "the file is damaged or not a mela model file") from exc
    state_dict = payload["state_dict"]
    if not isinstance(state_dict, Mapping):
        raise MelaError(f"{path}: state_dict is a {type(state_dict).__name__}; the file is damaged")
    problem = state_dict_mismatch(model.state_dict(), state_dict)
    if problem:
        raise MelaError(f"{path}: its weights do not fit its spec {spec.backbone} ({problem}); "
                        "the file is damaged or was edited: use the model.pt of a finished run")
    model.load_state_dict(state_dict)
    return model.to(device), payload


def peek_model(path: Path) -> FeatureModel:
    """The model saved at ``path``, on the CPU, built without touching the global random state.

    For checks before a run starts: the run seeds torch and then builds its models in a fixed order,
    so building one earlier must not shift the draws that initialise the others.
    """
    with torch.random.fork_rng(devices=[]):
        model, _ = load_feature_model(path, torch.device("cpu"))
    return model


def check_architecture(model: FeatureModel, name: str, path: Path) -> None:
    """A saved model used as ``model=name`` must be that architecture: never train another one silently."""
    if model.spec.backbone != name:
        raise MelaError(f"{path} holds a {model.spec.backbone} but model={name}; set model={model.spec.backbone} "
                        f"or give a {name} model")


def initial_model(start: Path | None, name: str, in_channels: int, feat_dim: int | None, device: torch.device,
                  log: Callable[[str], None]) -> FeatureModel:
    """The model a training step starts from: a saved one (``pretrained_model``) or a fresh ``name``."""
    if start is None:
        return build_model(name, in_channels, feat_dim)
    model, _ = load_feature_model(start, device)
    check_architecture(model, name, start)
    log(f"starting from {start}")
    check_feat_dim(feat_dim, model)
    return model
