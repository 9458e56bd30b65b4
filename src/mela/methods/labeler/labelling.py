"""Labelling every task with the fitted centroids."""

from __future__ import annotations

import numpy as np
import torch

from mela.errors import MelaError
from mela.methods.labeler.assignment import colliding_tasks
from mela.methods.labeler.constants import CHUNK_KEYS
from mela.methods.labeler.distances import nearest_centroids
from mela.methods.labeler.keys import TaskKeys, _shaped, as_task_keys
from mela.methods.labeler.modes import get_mode


def label_tasks(keys: np.ndarray | TaskKeys, centroids: np.ndarray, mode: str = "improved",
                chunk: int = CHUNK_KEYS, device: torch.device | None = None) -> np.ndarray:
    """(T, n_ways) centroid index of each task class; rows of -1 for tasks the labeler drops.

    Ragged keys give flat (K,) labels, -1 for the classes of a dropped task.
    ``mode`` (a registered name) labels the tasks whose keys collide: ``reference`` drops them,
    ``improved`` matches every task one-to-one, so none is dropped. Each key's nearest centroid
    comes from distances computed ``chunk`` keys at a time; only the tasks whose
    nearest centroids collide need the optimal matching.
    """
    tk, shape = as_task_keys(keys)
    if len(centroids) < tk.max_ways:
        raise MelaError(f"{len(centroids)} centroids cannot label {tk.max_ways}-way tasks; lower std_factor")
    labels = nearest_centroids(tk.keys, centroids, chunk, device)
    collide = colliding_tasks(labels, tk.task_of, tk.n_tasks)
    get_mode(mode).label_colliding(labels, collide, tk, centroids)
    return _shaped(labels, shape)
