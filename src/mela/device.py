"""Pick the compute device once, so no code moves tensors to the GPU on its own."""

from __future__ import annotations

import warnings

import numpy as np
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


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse instead of returning it to the OS after every batch.

    Training frees and re-allocates the same large activation buffers at every step;
    by default glibc unmaps them and the next step page-faults them back in. On a
    2-core CPU that costs about 30 % of an epoch's wall time (measured: a convnet4
    glyph epoch went from 17.5 s to 12.5 s, system time from 10 s to 0.2 s). Called
    once by the command-line entry points; a no-op where glibc's mallopt is absent.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    return all(mallopt(option, value) == 1 for option, value in (
        (m_trim_threshold, 1 << 30), (m_top_pad, 256 << 20), (m_mmap_threshold, 32 << 20)))


def pixel_tensor(images: np.ndarray) -> torch.Tensor:
    """Pixels as a CPU tensor sharing the array's memory, read-only memory maps included (packed data sets).

    torch warns about non-writable arrays because writing through the tensor would fault; mela only ever
    reads its pixel tensors (batches are gathered by indexing, which copies), so the warning is silenced here.
    """
    array = np.ascontiguousarray(images)
    if array.flags.writeable:
        return torch.from_numpy(array)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def place_images(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """A split's uint8 pixels as one tensor, on the device when they fit comfortably there (else on the CPU)."""
    pixels = pixel_tensor(images)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if pixels.numel() < 0.25 * free:
            return pixels.to(device)
    return pixels
