"""Checkpoints written atomically (temp file + rename) and read without running code.

A killed run never leaves a torn file, a full disk or unwritable folder is one
line naming the path, and a checkpoint is loaded with ``weights_only=True``: a
file from elsewhere can hold tensors and plain data, never objects whose
unpickling runs code.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import re
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from mela.data.preprocessing import Preprocessing
from mela.errors import MelaError
from mela.jsonio import read_json
from mela.models.feature_model import FeatureModel, ModelSpec, build_model, check_feat_dim

# An exported model (`mela export`): a folder with these two files.
EXPORT_JSON = "mela_model.json"
EXPORT_WEIGHTS = "model.safetensors"
EXPORT_FORMAT = "mela-model"

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


def model_metadata(step: str, data: object, **extra: object) -> dict:
    """What a step records in its model files besides the weights: the step and the training data's name and
    identity (the engine adds the input preprocessing: see :func:`with_preprocessing`)."""
    return {"step": step, "dataset": getattr(data, "name", str(data)),
            "dataset_identity": getattr(data, "identity", str(data)), **extra}


def with_preprocessing(metadata: dict, image_shape: tuple[int, ...], mean: tuple[float, ...],
                       std: tuple[float, ...]) -> dict:
    """``metadata`` plus the preprocessing of the model's input (size, channels, mean / std), so that a model file
    alone is enough to feed it raw images."""
    return {**metadata, "preprocessing": Preprocessing.of_training(image_shape, mean, std).to_dict()}


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
    """Rebuild the feature model saved at ``path`` on ``device``; returns it and the file's metadata.

    ``path`` is a model file of any step, or a folder written by ``mela export`` (see :func:`load_exported`).
    """
    path = Path(path)
    if path.is_dir():
        return load_exported(path, device)
    payload = load_checkpoint(path, device)
    if not isinstance(payload, dict) or "spec" not in payload or "state_dict" not in payload:
        raise MelaError(f"{path} is not a mela model file (no spec/state_dict); point to a step's model.pt")
    model = _model_of_spec(payload["spec"], path)
    state_dict = payload["state_dict"]
    if not isinstance(state_dict, Mapping):
        raise MelaError(f"{path}: state_dict is a {type(state_dict).__name__}; the file is damaged")
    problem = state_dict_mismatch(model.state_dict(), state_dict)
    if problem:
        raise MelaError(f"{path}: its weights do not fit its spec {model.spec.backbone} ({problem}); "
                        "the file is damaged or was edited: use the model.pt of a finished run")
    model.load_state_dict(state_dict)
    if "preprocessing" in payload:  # model files since 0.3.0; older ones: see mela.inference.model_io
        model.preprocessing = Preprocessing.from_dict(payload["preprocessing"], str(path))
    return model.to(device), {k: v for k, v in payload.items() if k != "state_dict"}


def _model_of_spec(spec_dict: object, path: Path) -> FeatureModel:
    try:
        return FeatureModel(ModelSpec.from_dict(spec_dict))  # type: ignore[arg-type]
    except MelaError as exc:
        raise MelaError(f"{path}: its model spec is unusable ({exc})") from exc
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise MelaError(f"{path}: its model spec {spec_dict!r} is unusable ({type(exc).__name__}: {exc}); "
                        "the file is damaged or not a mela model file") from exc


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_export_json(folder: Path) -> dict:
    """``mela_model.json`` of an exported folder, checked to be mela's."""
    if not (folder / EXPORT_JSON).is_file():
        raise MelaError(f"{folder} holds no {EXPORT_JSON}: it is not a folder written by `mela export`")
    described = read_json(folder / EXPORT_JSON)
    if not isinstance(described, dict) or described.get("format") != EXPORT_FORMAT:
        raise MelaError(f"{folder / EXPORT_JSON} is not a mela model description (no \"format\": "
                        f"\"{EXPORT_FORMAT}\"); export the model with `mela export`")
    return described


def load_exported(folder: Path, device: torch.device) -> tuple[FeatureModel, dict]:
    """An exported folder: weights from ``model.safetensors`` (memory-mapped, no pickle), checked against
    ``mela_model.json`` (the hash it records, and the shapes of the architecture it describes)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    described = read_export_json(folder)
    weights = folder / EXPORT_WEIGHTS
    if not weights.is_file():
        raise MelaError(f"{folder} has {EXPORT_JSON} but no {EXPORT_WEIGHTS}; export the model again")
    expected_hash = described.get("weights_sha256")
    if expected_hash and file_sha256(weights) != expected_hash:
        raise MelaError(f"{weights} does not match {EXPORT_JSON} (its SHA-256 differs from weights_sha256): one of "
                        "the two was replaced or edited; export the model again")
    model = _model_of_spec(described.get("architecture"), folder / EXPORT_JSON)
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise MelaError(f"{weights} is not a readable safetensors file ({exc}); export the model again") from None
    problem = state_dict_mismatch(model.state_dict(), state)
    if problem:
        raise MelaError(f"{weights} disagrees with {EXPORT_JSON}, which describes a {model.spec.backbone} "
                        f"({problem}); export the model again")
    model.load_state_dict(state)
    model.preprocessing = Preprocessing.from_dict(described.get("preprocessing"), str(folder / EXPORT_JSON))
    channels = model.spec.backbone_kwargs.get("in_channels", model.preprocessing.channels)
    if model.preprocessing.channels != channels:
        raise MelaError(f"{folder / EXPORT_JSON}: its preprocessing has {model.preprocessing.channels} channels but "
                        f"its {model.spec.backbone} takes {channels}; the file was edited: export the model again")
    return model.to(device), described


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
                  log: Callable[[str], None], options: Mapping[str, object] | None = None) -> FeatureModel:
    """The model a training step starts from: a saved one (``pretrained_model``) or a fresh ``name`` built with
    the backbone ``options`` (``model_options``), which a saved model must then agree with."""
    if start is None:
        return build_model(name, in_channels, feat_dim, backbone_options=options)
    model, _ = load_feature_model(start, device)
    check_architecture(model, name, start)
    saved = {k: v for k, v in model.spec.backbone_kwargs.items() if k != "in_channels"}
    if options and dict(options) != saved:
        raise MelaError(f"{start} was built with model_options {saved} but model_options={dict(options)}; "
                        "drop model_options or set them to the saved model's")
    log(f"starting from {start}")
    check_feat_dim(feat_dim, model)
    return model
