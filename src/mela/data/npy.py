"""Reading ``.npy`` / ``.npz`` arrays with failures that name the file (the seed data sets and the packed splits)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from mela.errors import MelaError


def read_npy(path: Path, key: str | None = None, mmap: bool = False, read_only: bool = False) -> np.ndarray:
    """Load an .npy file (memory-mapped with ``mmap``), or array ``key`` of an .npz file; failures name the file.

    Memory-mapping (copy-on-write: the array is writable, the file never changes) lets tiered780's
    multi-gigabyte image array be used without reading it all into RAM. ``read_only`` maps it read-only
    instead (packed data sets): every process reading the file shares the same page-cache pages.
    """
    mode = ("r" if read_only else "c") if mmap and key is None else None
    try:
        loaded = np.load(path, allow_pickle=False, mmap_mode=mode)
        if key is None:
            if not isinstance(loaded, np.ndarray):
                raise ValueError("expected an .npy array")
            return loaded
        with loaded:
            if key not in loaded.files:
                raise MelaError(f"{path} has no array '{key}' (it has {', '.join(loaded.files) or 'none'})")
            return loaded[key]
    except MelaError:
        raise
    except FileNotFoundError as exc:
        raise MelaError(f"{path} is missing") from exc
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise MelaError(f"{path} is unreadable or corrupt ({type(exc).__name__}: {exc}); get the file again") from exc
