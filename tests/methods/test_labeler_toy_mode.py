"""A labeler mode is one class registered by name: a toy mode that matches like ``improved`` but never spawns."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mela.errors import MelaError
from mela.methods.global_labels import infer_global_labels
from mela.methods.labeler import LabelerConfig, RaggedFeatures, register_mode
from mela.methods.labeler.modes import ImprovedMode


@register_mode("toy")
class NoSpawnMode(ImprovedMode):
    """One-to-one matching of every task, but no key spread: centroids are never spawned nor merged."""

    uses_spread = False


def _ragged_pile(seed: int) -> RaggedFeatures:
    """Tasks of 2-6 ways, classes of 1-4 items, 15 well separated classes."""
    rng = np.random.default_rng(seed)
    means = 6.0 * rng.normal(size=(15, 8)) / math.sqrt(8)
    ways = rng.integers(2, 7, 80)
    true = np.concatenate([rng.choice(15, w, replace=False) for w in ways])
    sizes = rng.integers(1, 5, len(true))
    items = means[np.repeat(true, sizes)] + rng.normal(size=(sizes.sum(), 8)) / math.sqrt(8)
    return RaggedFeatures(items, np.r_[0, np.cumsum(sizes)], np.r_[0, np.cumsum(ways)])


def test_a_registered_toy_mode_runs_through_infer_global_labels_by_its_name() -> None:
    features = _ragged_pile(0)
    labels = infer_global_labels(features, LabelerConfig(K=40, mode="toy"))
    assert labels.passes and all(p["spawned"] == 0 and p["merged"] == 0 for p in labels.passes)
    assert (labels.assigned >= 0).all()  # every task matched one-to-one, none dropped
    for lo, hi in zip(features.task_offsets[:-1], features.task_offsets[1:], strict=True):
        assert len(set(labels.assigned[lo:hi].tolist())) == hi - lo
    assert "count_check" in labels.diagnostics  # inherited from improved
    improved = infer_global_labels(features, LabelerConfig(K=40))
    assert sum(p["spawned"] + p["merged"] for p in improved.passes) > 0  # improved does spawn or merge here


def test_an_unknown_mode_error_lists_the_registered_modes_with_the_toy_one() -> None:
    with pytest.raises(MelaError, match=r"valid modes: improved, reference, toy"):
        LabelerConfig(mode="kmeans")
