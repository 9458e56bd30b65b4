"""Self-describing, portable models: ``model.safetensors`` + ``mela_model.json``, optionally ONNX and TorchScript.

The JSON says everything needed to use the weights without mela's training code: the architecture and its
options, input channels, image size, the normalisation, the feature size, the training data's identity, the
step, mela's version and, when a meta_eval run scored this model, its test accuracy. The safetensors file
holds tensors only (no pickle) and is memory-mapped when loaded. The ONNX / TorchScript files take the
*normalised* (N, C, H, W) float32 batch; the JSON's ``preprocessing`` says how to make it from pixels.

The folder is written next to its destination and moved into place at the end: an interrupted export
leaves the previous folder (or none), never half of one.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import warnings
from pathlib import Path

import torch

from mela._version import __version__
from mela.engine.checkpoint import EXPORT_FORMAT, EXPORT_JSON, EXPORT_WEIGHTS, file_sha256
from mela.errors import MelaError
from mela.inference.model_io import TrainedModel
from mela.jsonio import read_json, write_json_atomic

FORMATS = ("safetensors", "onnx", "torchscript")
ONNX_FILE = "model.onnx"
TORCHSCRIPT_FILE = "model.torchscript.pt"
ONNX_OPSET = 17


def recorded_test_accuracy(source: Path) -> list[dict] | None:
    """The rows of the newest meta_eval run that evaluated the model file ``source`` (None if none did)."""
    if source.parent.parent.parent.name != "saves":
        return None
    found = []
    for results in (source.parent.parent.parent / "meta_eval").glob("*/results.json"):
        try:
            content = read_json(results)
            if Path(str(content.get("model", ""))).resolve() == source.resolve():
                found.append((results.stat().st_mtime, content.get("rows", [])))
        except (MelaError, OSError, AttributeError):
            continue
    if not found:
        return None
    rows = max(found, key=lambda pair: pair[0])[1]
    return [{k: row[k] for k in ("shots", "column", "acc", "ci", "tasks") if k in row} for row in rows]


def describe(trained: TrainedModel) -> dict:
    """The ``mela_model.json`` content of a model (without the weights' hash and file list)."""
    model = trained.model
    known = recorded_test_accuracy(trained.source) if trained.source.is_file() else trained.info.get("test_accuracy")
    return {
        "format": EXPORT_FORMAT, "format_version": 1,
        "architecture": model.spec.to_dict(),
        "in_channels": trained.preprocessing.channels,
        "image_size": list(trained.preprocessing.image_size),
        "feature_size": model.feat_dim,
        "preprocessing": trained.preprocessing.to_dict(),
        "step": trained.info.get("step"), "dataset": trained.info.get("dataset"),
        "dataset_identity": trained.info.get("dataset_identity", trained.info.get("dataset")),
        "epoch": trained.info.get("epoch"), "val_acc": trained.info.get("val_acc"),
        "test_accuracy": known, "mela_version": __version__, "torch_version": torch.__version__,
        "exported_from": str(trained.source),
    }


def export_model(trained: TrainedModel, out: str | Path, formats: tuple[str, ...] = ("safetensors",),
                 overwrite: bool = False) -> Path:
    """Write ``out/`` with ``model.safetensors`` and ``mela_model.json`` (plus ``model.onnx`` /
    ``model.torchscript.pt`` when asked); returns the folder."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise MelaError(f"unknown export format '{unknown[0]}'; valid formats: {', '.join(FORMATS)}")
    out = Path(out).expanduser()
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise MelaError(f"{out} exists and is not empty; choose another --out, or add --force to replace it")
    if "onnx" in formats:
        _check_onnx_available()
    staging = out.with_name(f".{out.name}.{os.getpid()}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        described = describe(trained)
        model = trained.model.to("cpu").eval()
        _write_safetensors(model, staging / EXPORT_WEIGHTS, described)
        files = {"weights": EXPORT_WEIGHTS}
        example = torch.zeros(2, trained.preprocessing.channels, *trained.preprocessing.image_size)
        if "onnx" in formats:
            _write_onnx(model, example, staging / ONNX_FILE)
            files["onnx"] = ONNX_FILE
        if "torchscript" in formats:
            _write_torchscript(model, example, staging / TORCHSCRIPT_FILE)
            files["torchscript"] = TORCHSCRIPT_FILE
        described.update(files=files, weights_sha256=file_sha256(staging / EXPORT_WEIGHTS),
                         graph_input="the normalised (N, C, H, W) float32 batch, see preprocessing")
        write_json_atomic(staging / EXPORT_JSON, described)
        _swap_into_place(staging, out)
    except OSError as exc:
        raise MelaError(f"cannot write {out} ({exc.strerror or exc}); check free disk space and permissions") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _swap_into_place(staging: Path, out: Path) -> None:
    old = out.with_name(f".{out.name}.{os.getpid()}.old")
    if out.exists():
        os.replace(out, old)
    os.replace(staging, out)
    shutil.rmtree(old, ignore_errors=True)


def _write_safetensors(model: torch.nn.Module, path: Path, described: dict) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"format": EXPORT_FORMAT, "backbone": described["architecture"]["backbone"],
                                          "mela_version": __version__})


def _check_onnx_available() -> None:
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise MelaError("--format onnx needs the onnx package: pip install 'mela[export]'") from None


@contextlib.contextmanager
def _quiet_tracing():
    """The exporters' deprecation and tracer warnings (the shape checks are constants for a fixed image size)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _write_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    buffer = io.BytesIO()
    with _quiet_tracing():
        torch.onnx.export(model, (example,), buffer, dynamo=False, input_names=["images"],
                          output_names=["features"], dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
                          opset_version=ONNX_OPSET)
    path.write_bytes(buffer.getvalue())


def _write_torchscript(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    with _quiet_tracing(), torch.no_grad():
        traced = torch.jit.trace(model, example)
    traced.save(str(path))
