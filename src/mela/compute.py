"""How a network pass runs on one device: :class:`Compute` (autocast dtype and memory layout) and :data:`FP32`.

A value type below the methods and the engine, so both can run a forward pass under a run's precision: the
evaluator (methods) takes one, and :mod:`mela.engine.precision` resolves a step's settings into one (and
re-exports both names). Why the outputs are cast back to float32: see :mod:`mela.engine.precision`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass(frozen=True)
class Compute:
    """A resolved choice for one run on one device: autocast dtype and memory layout.

    Attributes:
        device_type: ``cpu`` or ``cuda`` (what autocast is entered for).
        precision: ``fp32`` or ``bf16``.
        channels_last: models and image batches in ``torch.channels_last`` memory format.
        reason: why ``precision=auto`` chose this precision (for the log); not part of the choice's identity.
    """

    device_type: str = "cpu"
    precision: str = "fp32"
    channels_last: bool = False
    reason: str = field(default="", compare=False)

    def autocast(self) -> contextlib.AbstractContextManager:
        """bfloat16 autocast for ``bf16``; nothing for ``fp32``."""
        if self.precision == "bf16":
            return torch.autocast(self.device_type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def prepare(self, model: nn.Module) -> nn.Module:
        """The model in this run's memory format (in place; parameters keep their values)."""
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        """An image batch (B, C, H, W) in this run's memory format."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def forward(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """``module(x)`` under autocast, every output cast back to float32 for the losses and solves after it."""
        with self.autocast():
            out = module(self.batch(x))
        if isinstance(out, (list, tuple)):
            return [o.float() for o in out]
        return out.float()

    def describe(self) -> str:
        """For the run's log line: ``precision bf16 (auto: ...), channels_last on``."""
        why = f" ({self.reason})" if self.reason else ""
        return f"precision {self.precision}{why}, channels_last {'on' if self.channels_last else 'off'}"


FP32 = Compute()
