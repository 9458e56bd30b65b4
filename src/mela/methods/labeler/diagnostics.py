"""Label-free reliability of the inferred labels."""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial.distance import cdist

from mela.methods.labeler.assignment import colliding_tasks
from mela.methods.labeler.constants import CHUNK_KEYS, MAX_RELIABLE_COLLISION_RATE, MAX_RELIABLE_DISTANCE_RATIO
from mela.methods.labeler.distances import nearest_centroids, paired_sq_distances, within_task_sq_distances
from mela.methods.labeler.keys import TaskKeys, as_task_keys
from mela.methods.labeler.labelling import label_tasks
from mela.methods.labeler.noise import KeySpread, as_spread, cluster_spread


def key_distances(keys: np.ndarray | TaskKeys, centroids: np.ndarray, assigned: np.ndarray) -> np.ndarray:
    """Each key's distance to the centroid it is labelled with (NaN where unlabelled), shaped like ``assigned``."""
    tk, _ = as_task_keys(keys)
    flat = np.asarray(assigned).reshape(-1)
    ok = np.flatnonzero(flat >= 0)
    out = np.full(len(flat), np.nan)
    out[ok] = np.sqrt(paired_sq_distances(tk.keys, ok, np.asarray(centroids, dtype=np.float64), flat[ok]))
    return out.reshape(np.shape(assigned))


def key_diagnostics(
    keys: np.ndarray | TaskKeys, centroids: np.ndarray, spread: KeySpread | float | None, max_pairs_keys: int = 4000,
    chunk: int = CHUNK_KEYS, device: torch.device | None = None,
) -> dict:
    """Label-free reliability of the inferred labels; ``warning`` is a sentence or ``None``.

    - ``different_class_key_distance``: median distance between two keys of one task
      (certainly two classes);
    - ``distance_ratio``: same-class over different-class key distance; two keys of one
      class should be much closer than two keys of different classes, near 1 they are not;
    - ``cannot_link_violation_rate``: fraction of tasks with two keys whose nearest
      centroid is the same (plain nearest-centroid labels would give two classes of one
      task one label);
    - ``nearest_key_same_task_rate``: fraction of keys whose nearest other key is in their
      own task, over what chance would give (1 means the geometry knows nothing of tasks).
    """
    tk, _ = as_task_keys(keys)
    spread = as_spread(spread, tk.dim)
    if spread is None and len(centroids) >= tk.max_ways:  # one-image classes: measure it around the centroids
        spread = cluster_spread(tk, label_tasks(tk, centroids, "improved", chunk, device))
    within = np.sqrt(within_task_sq_distances(tk))
    different = float(np.median(within)) if len(within) else float("nan")
    if len(centroids):
        collisions = float(colliding_tasks(nearest_centroids(tk.keys, centroids, chunk, device), tk.task_of,
                                           tk.n_tasks).mean())
    else:
        collisions = 1.0
    flat, task_of = tk.keys, tk.task_of
    if len(flat) > max_pairs_keys:
        rows = np.random.default_rng(0).choice(len(flat), max_pairs_keys, replace=False)
        flat, task_of = flat[rows], task_of[rows]
    all_d = cdist(flat, flat)
    np.fill_diagonal(all_d, np.inf)
    nearest = all_d.argmin(axis=1)
    same_task = float((task_of[nearest] == task_of).mean())
    chance = float(((np.bincount(task_of)[task_of] - 1) / max(len(flat) - 1, 1)).mean())
    out = {
        "same_class_key_distance": None if spread is None else spread.distance,
        "same_class_distance_source": None if spread is None else spread.source,
        "shared_key_noise": None if spread is None else spread.shared,
        "effective_dimension": None if spread is None else spread.effective_dim,
        "different_class_key_distance": different,
        "distance_ratio": None if spread is None or not different > 0 else spread.distance / different,
        "cannot_link_violation_rate": collisions,
        "nearest_key_same_task_rate": same_task / chance if chance > 0 else None,
    }
    out["warning"] = reliability_warning(out)
    return out


def reliability_warning(diagnostics: dict) -> str | None:
    """One sentence when the diagnostics say the inferred labels cannot be trusted, else ``None``."""
    reasons = []
    if diagnostics.get("same_class_key_distance") is None:
        reasons.append("the same-class key distance could not be measured (one image per class and no centroid "
                       "reached by two keys)")
    ratio = diagnostics.get("distance_ratio")
    if ratio is not None and ratio > MAX_RELIABLE_DISTANCE_RATIO:
        reasons.append(f"two keys of one class are {ratio:.2f} times as far apart as two keys of different classes "
                       f"(reliable below {MAX_RELIABLE_DISTANCE_RATIO})")
    collisions = diagnostics.get("cannot_link_violation_rate")
    if collisions is not None and collisions > MAX_RELIABLE_COLLISION_RATE:
        reasons.append(f"{100 * collisions:.0f}% of tasks put two of their classes nearest one centroid "
                       f"(reliable below {100 * MAX_RELIABLE_COLLISION_RATE:.0f}%)")
    if not reasons:
        return None
    return ("inferred labels are unreliable: " + "; ".join(reasons)
            + "; the representation does not separate the classes: train learn_meta_repr longer or on more data, "
              "or use the true labels")
