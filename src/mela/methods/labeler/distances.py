"""Key-centroid and key-key distances: paired sums, chunked nearest centroids, the fit loop's table."""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial.distance import cdist

from mela.methods.labeler.constants import CHUNK_ENTRIES, CHUNK_KEYS, CHUNK_PAIRS
from mela.methods.labeler.keys import TaskKeys, as_task_keys, task_pairs


def paired_sq_distances(x: np.ndarray, rows: np.ndarray, y: np.ndarray, cols: np.ndarray,
                        chunk: int = CHUNK_PAIRS) -> np.ndarray:
    """Squared distances ``|x[rows[i]] - y[cols[i]]|^2``, in chunks of pairs.

    The squares are summed coordinate by coordinate, in order, as SciPy's ``cdist`` /
    ``pdist`` do, so the values are the same to the last bit.
    """
    out = np.empty(len(rows), dtype=np.float64)
    for lo in range(0, len(rows), chunk):
        hi = min(lo + chunk, len(rows))
        diff = np.asarray(x[rows[lo:hi]], dtype=np.float64) - np.asarray(y[cols[lo:hi]], dtype=np.float64)
        np.square(diff, out=diff)
        acc = np.zeros(hi - lo)
        for column in np.ascontiguousarray(diff.T):
            acc += column
        out[lo:hi] = acc
    return out


def nearest_centroids(keys: np.ndarray, centroids: np.ndarray, chunk: int = CHUNK_KEYS,
                      device: torch.device | None = None) -> np.ndarray:
    """(K,) index of each key's nearest centroid, ``chunk`` keys at a time (fewer when there are more than
    ``CHUNK_ENTRIES / chunk`` centroids): ``cdist(keys, centroids).argmin(1)``.

    A matrix product ranks the centroids fast (``|c|^2 - 2 x.c``, after centring); the few
    centroids within its rounding error of the best are then compared by the exact
    distance, summed as ``cdist`` sums it, ties to the lowest index as ``argmin`` breaks them.
    With a torch ``device`` the product runs there (float64) and only the few candidates come
    back, so the answer is the host's to the bit.
    """
    keys = np.asarray(keys, dtype=np.float64)
    centroids = np.asarray(centroids, dtype=np.float64)
    out = np.empty(len(keys), dtype=np.int64)
    if len(centroids) == 0 or len(keys) == 0:
        return out
    centre = centroids.mean(axis=0)
    shifted = centroids - centre
    norms = (shifted**2).sum(axis=1)
    rank_candidates = _candidates_on(device, shifted, norms) if device is not None else _candidates(shifted, norms)
    # At most CHUNK_ENTRIES key-centroid entries per block, however many centroids there are.
    chunk = max(1, min(chunk, CHUNK_ENTRIES // len(centroids)))
    for lo in range(0, len(keys), chunk):
        block = keys[lo : lo + chunk]
        rows, cols = rank_candidates(block - centre)
        exact = np.sqrt(paired_sq_distances(block, rows, centroids, cols))
        order = np.lexsort((cols, exact, rows))
        first = np.ones(len(order), dtype=bool)
        first[1:] = rows[order][1:] != rows[order][:-1]
        out[lo + rows[order][first]] = cols[order][first]
    return out


def _candidates(shifted: np.ndarray, norms: np.ndarray):
    """(rows, cols) of the centroids within rounding of each centred key's best by the product form, NumPy."""
    scaled, top = -2.0 * shifted.T, norms.max()

    def candidates(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rank = x @ scaled
        rank += norms
        # Rounding of the product form is far below 1e-9 of |x|^2 + |c|^2; anything that close may be the nearest.
        slack = 1e-9 * ((x**2).sum(axis=1) + top) + 1e-300
        return np.nonzero(rank <= (rank.min(axis=1) + slack)[:, None])

    return candidates


def _candidates_on(device: torch.device, shifted: np.ndarray, norms: np.ndarray):
    """:func:`_candidates` with the product on a torch device (float64, the same slack)."""
    scaled = torch.as_tensor(-2.0 * shifted.T, device=device)
    norms_t = torch.as_tensor(norms, device=device)
    top = float(norms.max())

    def candidates(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        xt = torch.as_tensor(x, device=device)
        rank = xt @ scaled + norms_t
        slack = 1e-9 * ((xt**2).sum(dim=1) + top) + 1e-300
        rows, cols = torch.nonzero(rank <= (rank.min(dim=1).values + slack)[:, None], as_tuple=True)
        return rows.cpu().numpy(), cols.cpu().numpy()

    return candidates


def within_task_sq_distances(keys: np.ndarray | TaskKeys) -> np.ndarray:
    """Squared distances between every two keys of one task (unsorted), from pair index arrays in chunks."""
    tk, _ = as_task_keys(keys)
    first, second, _ = task_pairs(tk.offsets)
    return paired_sq_distances(tk.keys, first, tk.keys, second)


def different_class_sq_distances(keys: np.ndarray | TaskKeys) -> np.ndarray:
    """Sorted squared distances between two keys of one task: a sample of certainly-different-class pairs."""
    return np.sort(within_task_sq_distances(keys))


class CentroidTable:
    """The centroids of :func:`fit_centroids`' loop, and the distances of one task's keys to them.

    The loop is sequential (each task's keys against the current centroids, then an update of the
    few it matched), so it runs on the host; what costs is the distances, K centroids x d per task.
    With a torch ``device`` they are computed there (float64) from a copy of the centroids kept in
    step row by row, so only a task's keys, its n_ways updated or spawned rows and its distances
    travel (the copy grows by doubling, as a list does). Without one, SciPy's ``cdist``. The two
    agree to float64 rounding.
    """

    def __init__(self, centroids: np.ndarray, device: torch.device | None = None) -> None:
        self.host = np.asarray(centroids, dtype=np.float64).copy()
        self.device = device
        self._mirror: torch.Tensor | None = None
        self.replace(self.host)

    def __len__(self) -> int:
        return len(self.host)

    def distances(self, task: np.ndarray) -> np.ndarray:
        """(n, K) Euclidean distances of the task's keys to every centroid."""
        if self._mirror is None:
            return cdist(task, self.host)
        keys = torch.as_tensor(np.asarray(task, dtype=np.float64), device=self.device)
        rows = self._mirror[None, : len(self.host)]
        return torch.cdist(keys[None], rows, compute_mode="donot_use_mm_for_euclid_dist")[0].cpu().numpy()

    def move_toward(self, rows: np.ndarray, keys: np.ndarray, counts: np.ndarray) -> None:
        """Running means: centroid ``rows[i]`` (now of ``counts[i]`` keys) moves toward ``keys[i]``."""
        self.host[rows] += (keys - self.host[rows]) / counts[:, None]
        if self._mirror is not None:
            self._mirror[torch.as_tensor(rows, device=self.device)] = torch.as_tensor(self.host[rows],
                                                                                     device=self.device)

    def append(self, keys: np.ndarray) -> None:
        """New centroids at these keys (spawns)."""
        start = len(self.host)
        self.host = np.concatenate([self.host, keys])
        if self._mirror is None:
            return
        if len(self.host) > len(self._mirror):
            grown = self._mirror.new_empty((max(2 * len(self._mirror), len(self.host)), self.host.shape[1]))
            grown[:start] = self._mirror[:start]
            self._mirror = grown
        self._mirror[start : len(self.host)] = torch.as_tensor(self.host[start:], device=self.device)

    def replace(self, centroids: np.ndarray) -> None:
        """New centroids (after a merge or a prune)."""
        self.host = np.asarray(centroids, dtype=np.float64)
        if self.device is not None:
            self._mirror = torch.as_tensor(self.host, device=self.device).clone()
