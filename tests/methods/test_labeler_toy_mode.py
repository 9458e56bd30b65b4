"""A labeler mode is one class registered by name: a toy mode that matches like ``improved`` but never spawns."""

from __future__ import annotations

import pytest

from mela.errors import MelaError
from mela.methods.global_labels import infer_global_labels
from mela.methods.labeler import LabelerConfig, register_mode
from mela.methods.labeler.modes import ImprovedMode
from tests.conftest import ragged_pile


@register_mode("toy")
class NoSpawnMode(ImprovedMode):
    """One-to-one matching of every task, but no key spread: centroids are never spawned nor merged."""

    uses_spread = False


def test_a_registered_toy_mode_runs_through_infer_global_labels_by_its_name() -> None:
    features, _ = ragged_pile(0)
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
