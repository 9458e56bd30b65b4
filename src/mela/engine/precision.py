"""Numeric precision and memory layout of the network passes: ``precision`` and ``channels_last``.

Why: on a GPU with bfloat16 (Ampere and newer), autocast runs convolutions and matrix products on its bfloat16
tensor cores and halves the activation memory; the channels-last layout (NHWC) lets some convolution kernels skip
layout conversions. Neither may touch the solves
whose accuracy needs full precision: the ridge meta-learner's solve and the test-time heads always get float32
(or float64) features, because :meth:`Compute.forward` casts every output leaving autocast with ``.float()``.

A step asks with :class:`ComputeSettings` (``auto`` allowed, checked when read, before any data is loaded);
the run resolves it once against its device into a :class:`Compute`, which the training and evaluation loops use.

What ``auto`` picks, and the measurements behind it (``benchmarks/train_throughput.py``: one training step of the
engine's own epoch functions, images/s, variants timed in turns; results in ``benchmarks/results/
train_throughput_cpu*.json``):

- precision: bf16 on a CUDA device that supports it (``torch.cuda.is_bf16_supported()``), and on a CPU with native
  bfloat16 arithmetic (AVX512-BF16 or AMX, :func:`native_cpu_bf16`); fp32 elsewhere. On a 2-core AMD EPYC with
  AVX512-BF16 bf16 autocast trained 1.7x to 2.9x faster than fp32 in every cell (convnet4 at 32 px, episodic:
  1,420 -> 3,630 images/s with channels_last; supervised 2,190 -> 3,880; resnet12 at 84 px: 2.1x to 2.4x and 1.7x).
  On a 2-core AMD EPYC with AVX2 only (no native bfloat16) bf16 autocast ran at 0.13x to 0.35x of fp32 (convnet4:
  94.7 -> 12.8 images/s; resnet12: 0.69 -> 0.11), so there it is never chosen by itself (``precision=bf16``
  still forces it). ``MELA_CPU_BF16=0`` in the environment makes ``auto`` keep fp32 on every CPU (the test suite
  sets it, so its numbers do not depend on the machine's processor).
- channels_last on the CPU: under bf16 it is on for every convolutional backbone (registered with
  ``channels_last=True``): bf16 + channels_last beat plain bf16 in all four cells above (1.01x to 1.77x). Under
  fp32, on the AVX2 machine, median of 11 calls: convnet4 at 32 px 117 -> 125 images/s (1.07x, episodic) and
  108 -> 125 (1.16x, supervised); on 1-channel (glyph) input 1.09x and 1.08x; resnet12 at 84 px: 0.93x and 0.99x,
  no gain. ``auto`` turns it on for the backbones measured faster (registered with ``channels_last_cpu=True``).
  On CUDA it is on for every convolutional backbone (``channels_last=True``, see
  :func:`mela.models.registry.model_info`), PyTorch's advice for convolutions under autocast; not measured here:
  ``benchmarks/gpu_check.sh`` fills those rows on a GPU machine, and :func:`channels_last_auto` should follow them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from mela.compute import FP32 as FP32  # re-exported: importers of mela.engine.precision keep it
from mela.compute import Compute
from mela.errors import MelaError

PRECISIONS = ("auto", "fp32", "bf16")


def check_precision(text: str) -> str:
    """``auto``, ``fp32`` or ``bf16``; anything else is a one-line error listing them."""
    value = str(text).strip().lower()
    if value not in PRECISIONS:
        raise MelaError(f"precision must be one of {', '.join(PRECISIONS)}, got {text!r}")
    return value


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` runs bfloat16 autocast: any CPU; a CUDA GPU that reports bf16 support."""
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        with torch.cuda.device(device):
            return bool(torch.cuda.is_bf16_supported())
    return False


CPU_BF16_ENV = "MELA_CPU_BF16"


def cpu_bf16_switched_off() -> bool:
    """``MELA_CPU_BF16=0`` (or false, no, off) in the environment: ``auto`` keeps fp32 on every CPU."""
    return os.environ.get(CPU_BF16_ENV, "").strip().lower() in ("0", "false", "no", "off")


def native_cpu_bf16() -> str | None:
    """The CPU's native bfloat16 instructions (``"AMX"``, ``"AVX512-BF16"``), or None: then bf16 is emulated, slower
    than fp32. ``MELA_CPU_BF16=0`` in the environment answers None on any CPU."""
    if cpu_bf16_switched_off():
        return None
    probes = (("AMX", "_is_amx_tile_supported"), ("AVX512-BF16", "_is_avx512_bf16_supported"))
    for name, probe in probes:
        check = getattr(torch.cpu, probe, None)
        try:
            if check is not None and check():
                return name
        except RuntimeError:
            continue
    return None


def auto_precision(device: torch.device) -> tuple[str, str]:
    """What ``precision=auto`` picks on ``device``, and why (for the run's first log line)."""
    if device.type == "cuda":
        if bf16_supported(device):
            return "bf16", "auto: the GPU has bfloat16"
        return "fp32", "auto: the GPU has no bfloat16"
    if device.type == "cpu":
        native = native_cpu_bf16()
        if native:
            return "bf16", f"auto: this CPU has native bfloat16 ({native})"
        if cpu_bf16_switched_off():
            return "fp32", f"auto: {CPU_BF16_ENV}={os.environ[CPU_BF16_ENV]}"
        return "fp32", "auto: this CPU has no native bfloat16 (AVX512-BF16 or AMX), where bf16 runs slower"
    return "fp32", f"auto: no bfloat16 autocast on {device.type}"


def channels_last_auto(device_type: str, backbone: str | None, precision: str = "fp32") -> bool:
    """What ``channels_last=auto`` picks: where the layout measured faster (see the module docstring).

    The registry's metadata says which backbones those are (``register_model(..., channels_last=...,
    channels_last_cpu=...)``); an unknown or missing backbone gets the plain layout.
    """
    from mela.models.registry import available_models, model_info

    if backbone not in available_models() or not model_info(backbone).channels_last:
        return False
    if device_type == "cuda" or (device_type == "cpu" and precision == "bf16"):
        return True
    return device_type == "cpu" and model_info(backbone).channels_last_cpu


@dataclass(frozen=True)
class ComputeSettings:
    """What a step asks for: ``precision`` (auto | fp32 | bf16) and ``channels_last`` (None for auto, or a bool).

    Bad values fail here, when the config is read; :meth:`resolve` turns the request into a :class:`Compute`.
    """

    precision: str = "auto"
    channels_last: bool | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision", check_precision(self.precision))
        if self.channels_last is not None and not isinstance(self.channels_last, bool):
            raise MelaError(f"channels_last must be auto, true or false, got {self.channels_last!r}")

    def resolve(self, device: torch.device | str, backbone: str | None = None) -> Compute:
        """The run's choice on ``device`` for a model with this ``backbone`` (what ``channels_last=auto`` reads).

        ``precision=bf16`` on a CUDA GPU without bfloat16 is a one-line error.
        """
        device = torch.device(device)
        precision, reason = self.precision, ""
        if precision == "auto":
            precision, reason = auto_precision(device)
        elif precision == "bf16" and not bf16_supported(device):
            name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
            raise MelaError(f"precision=bf16 was asked for but {device} ({name}) has no bfloat16 support; "
                            "use precision=fp32 or precision=auto")
        channels_last = self.channels_last
        if channels_last is None:
            channels_last = channels_last_auto(device.type, backbone, precision)
        return Compute(device.type, precision, channels_last, reason)


def backbone_of(model: nn.Module) -> str | None:
    """The backbone name of a :class:`~mela.models.feature_model.FeatureModel` (or a classifier around one)."""
    for candidate in (model, getattr(model, "features", None)):
        spec = getattr(candidate, "spec", None)
        if spec is not None:
            return str(spec.backbone)
    return None
