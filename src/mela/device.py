"""Pick the compute device once, so no code calls ``.cuda()`` on its own."""

from __future__ import annotations

import torch

from mela.errors import MelaError


def pick_device(requested: str = "auto") -> torch.device:
    """Return the device to run on: ``auto`` takes the GPU when there is one."""
    if requested in ("auto", "", None):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise MelaError(f"device={requested} was asked for but no CUDA GPU is visible; use device=cpu or device=auto")
    try:
        return torch.device(requested)
    except RuntimeError as exc:
        raise MelaError(f"unknown device '{requested}': use auto, cpu, cuda or cuda:N") from exc
