"""Reading a user-given centroids file (``pretrained_centroids``) with one-line errors.

learn_labeler can reuse the centroids of an earlier run instead of clustering. The
file comes from the user, so everything about it is checked before it is used:
that it is an .npz (loaded without pickle), that it has a ``centroids`` array, and
that the array is a finite (K, feat_dim) matrix matching the labeler model's features.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from mela.errors import MelaError

CENTROIDS_FILE = "centroids.npz"
CENTROIDS_KEY = "centroids"
_HINT = "give the centroids.npz of a finished learn_labeler run (or the run's folder)"


def load_centroids_file(path: Path | str, feat_dim: int, min_count: int = 1) -> np.ndarray:
    """The (K, feat_dim) float64 centroids stored at ``path`` (a centroids .npz, or a run folder holding one).

    ``feat_dim`` is the dimension of the labeler model's task keys; ``min_count`` the
    fewest centroids the labelling can use (a task's ``n_ways`` classes need distinct ones).
    """
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / CENTROIDS_FILE
    if not path.is_file():
        raise MelaError(f"no centroids at {path}; {_HINT}")
    try:
        stored = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise MelaError(f"{path} is not a readable .npz file ({type(exc).__name__}: {exc}); {_HINT}") from exc
    if not isinstance(stored, np.lib.npyio.NpzFile):
        raise MelaError(f"{path} is not a centroids .npz (it is a bare .npy array); {_HINT}")
    with stored:
        if CENTROIDS_KEY not in stored.files:
            have = ", ".join(stored.files) or "no arrays"
            raise MelaError(f"{path} has no '{CENTROIDS_KEY}' array (it has {have}); {_HINT}")
        try:
            centroids = stored[CENTROIDS_KEY]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise MelaError(f"{path}: its '{CENTROIDS_KEY}' array is unreadable ({type(exc).__name__}: {exc}); "
                            f"{_HINT}") from exc
    return check_centroids(centroids, feat_dim, path, min_count)


def check_centroids(centroids: np.ndarray, feat_dim: int, path: Path | str, min_count: int = 1) -> np.ndarray:
    """Refuse centroids that are not a finite (K >= min_count, feat_dim) real matrix; return them as float64."""
    if centroids.dtype.kind not in "fiu" or centroids.ndim != 2:
        raise MelaError(f"{path}: centroids should be a (K, {feat_dim}) array of numbers, found {centroids.dtype} "
                        f"of shape {centroids.shape}; {_HINT}")
    if centroids.shape[1] != feat_dim:
        raise MelaError(f"{path}: centroids have dimension {centroids.shape[1]} but the labeler model's features "
                        f"have {feat_dim}; use centroids from a run with the same label_recovery_model and feat_dim")
    if len(centroids) < min_count:
        raise MelaError(f"{path}: {len(centroids)} centroids, but a task's {min_count} classes need {min_count} "
                        f"distinct ones; {_HINT}")
    centroids = centroids.astype(np.float64)
    if not np.isfinite(centroids).all():
        raise MelaError(f"{path}: centroids contain NaN or infinite values; {_HINT}")
    return centroids
