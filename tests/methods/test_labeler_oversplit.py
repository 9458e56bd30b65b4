"""The over-split check: global classes that never share a task yet lie too close to be different classes."""

from __future__ import annotations

import itertools

import numpy as np
from scipy.spatial.distance import cdist

from mela.methods.global_labels import infer_global_labels
from mela.methods.labeler import (
    LabelerConfig,
    RaggedFeatures,
    TaskKeys,
    label_tasks,
    oversplit_check,
    oversplit_warning,
)
from mela.methods.labeler.oversplit import split_chances
from tests.conftest import ragged_pile

SPACING = 3.0
SPLIT = (0, 7, 14, 21, 28)


def grid_pile(seed: int = 1) -> tuple[TaskKeys, np.ndarray, np.ndarray]:
    """30 classes on a 6 x 5 grid in 2-D (spacing 3, keys 0.05 from their class mean), 80 tasks of 4 ways;
    the keys, their true classes, and the class means."""
    rng = np.random.default_rng(seed)
    means = SPACING * np.array([(x, y) for x in range(6) for y in range(5)], dtype=np.float64)
    true = np.concatenate([rng.choice(30, 4, replace=False) for _ in range(80)])
    keys = means[true] + 0.05 * rng.normal(size=(len(true), 2))
    return TaskKeys(keys, np.arange(81, dtype=np.int64) * 4), true, means


def split_classes(keys: TaskKeys, true: np.ndarray, classes: tuple[int, ...] = SPLIT) -> np.ndarray:
    """The true labels, except that each of ``classes`` has its keys in odd tasks in a global class of their own
    (30 + the class): one class split in two, the halves never sharing a task (a task has one key per class)."""
    assigned = true.copy()
    for c in classes:
        assigned[(true == c) & (keys.task_of % 2 == 1)] = 30 + c
    return assigned


def chance_by_hand(keys: np.ndarray, assigned: np.ndarray, offsets: np.ndarray, g: int, h: int) -> float:
    """R / (1 + R) for class g and its rival h, every step written out: centres, the pairs that share a task,
    beta by Levina-Bickel over each class's 5 nearest partners, R = (M / n) (d_gh^2 / d_gc^2)^beta."""
    classes = sorted(set(assigned.tolist()))
    centre = {c: keys[assigned == c].mean(axis=0) for c in classes}
    together = set()
    for t in range(len(offsets) - 1):
        for a, b in itertools.combinations(assigned[offsets[t] : offsets[t + 1]].tolist(), 2):
            together |= {(a, b), (b, a)}
    sq = {(a, b): float(cdist(centre[a][None], centre[b][None], "sqeuclidean")[0, 0]) for a in classes for b in classes}
    steps, logs = 0, 0.0
    for c in classes:
        near = sorted(sq[c, p] for p in classes if (c, p) in together)[:5]
        if len(near) >= 3:
            steps += len(near) - 1
            logs += sum(np.log(near[-1] / x) for x in near)
    beta = steps / logs
    partners = [p for p in classes if (g, p) in together]
    apart = len(classes) - 1 - len(partners)
    odds = apart / len(partners) * (sq[g, h] / min(sq[g, p] for p in partners)) ** beta
    return odds / (1 + odds)


def test_five_classes_split_into_two_global_classes_that_never_share_a_task_are_counted_exactly() -> None:
    keys, true, _ = grid_pile()
    assigned = split_classes(keys, true)
    check = oversplit_check(keys, assigned)
    # 35 global classes; five groups of two; 30 classes once each group counts as one.
    assert (check["classes"], check["looks_split"], check["clusters_involved"]) == (35, 5, 10)
    assert check["split_share"] == 5 / 30 and check["fires"]
    found = split_chances(keys, assigned)
    labels = found.labels.tolist()
    for c in SPLIT:
        g, h = labels.index(c), labels.index(30 + c)
        assert found.rival[g] == h and found.rival[h] == g
        assert np.isclose(found.chance[g], chance_by_hand(keys.keys, assigned, keys.offsets, c, 30 + c), rtol=1e-9)
        assert found.chance[g] < 1e-3
    assert found.chance[found.chance > 1e-3].min() > 0.05  # no other class comes near
    assert "5 classes (17%) look split over 10 global classes" in oversplit_warning(check)


def test_the_clean_labelling_of_the_same_pile_counts_no_split_and_does_not_warn() -> None:
    keys, true, _ = grid_pile()
    check = oversplit_check(keys, true)
    assert (check["classes"], check["looks_split"], check["clusters_involved"], check["split_share"]) == (30, 0, 0, 0.0)
    assert not check["fires"] and oversplit_warning(check) is None
    found = split_chances(keys, true)
    # Every class has neighbours it never shares a task with, yet none lies close enough to look split.
    assert (found.rival >= 0).all() and found.chance.min() > 0.2


def test_up_to_four_split_classes_are_counted_but_too_few_to_warn_however_large_their_share() -> None:
    keys, true, _ = grid_pile()
    for classes in (SPLIT[:2], SPLIT[:3], SPLIT[:4]):
        check = oversplit_check(keys, split_classes(keys, true, classes))
        assert check["looks_split"] == len(classes) and check["split_share"] == len(classes) / 30
        assert check["split_share"] > check["max_share"] and not check["fires"]


def test_labels_of_a_fixed_shape_pile_count_the_same_as_the_ragged_form() -> None:
    keys, true, _ = grid_pile()
    assigned = split_classes(keys, true)
    fixed = oversplit_check(keys.keys.reshape(80, 4, 2), assigned.reshape(80, 4))
    assert fixed == oversplit_check(keys, assigned)


def test_unlabelled_task_classes_are_left_out_and_tiny_labellings_count_nothing() -> None:
    keys, true, _ = grid_pile()
    dropped = split_classes(keys, true)
    dropped[:40] = -1  # reference mode drops whole tasks
    check = oversplit_check(keys, dropped)
    assert check["classes"] == len(np.unique(dropped[dropped >= 0])) and check["looks_split"] == 5
    two = oversplit_check(TaskKeys(keys.keys[:4], np.array([0, 2, 4])), np.array([0, 1, 1, 0]))
    assert (two["looks_split"], two["split_share"], two["fires"], two["exponent"]) == (0, 0.0, False, None)


def test_labeller_diagnostics_carry_the_check_and_warn_for_duplicated_centroids_only() -> None:
    keys, true, means = grid_pile()
    rng = np.random.default_rng(1)
    items = np.repeat(keys.keys, 3, axis=0) + 0.01 * rng.normal(size=(3 * len(true), 2))
    features = RaggedFeatures(items, np.arange(len(true) + 1) * 3, keys.offsets)
    # Given centroids: the class means, and a second copy of five of them, a little to one side.
    duplicated = np.vstack([means, means[list(SPLIT)] + [0.03, 0.0]])
    labels = infer_global_labels(features, LabelerConfig(), centroids=duplicated)
    assert np.array_equal(labels.assigned, label_tasks(features.keys(), duplicated))
    assert labels.diagnostics["oversplit"]["looks_split"] == 5
    assert "look split over 10 global classes" in labels.warning
    clean = infer_global_labels(features, LabelerConfig(), centroids=means)
    assert clean.diagnostics["oversplit"]["looks_split"] == 0 and clean.warning is None


def test_a_fitted_ragged_pile_of_well_separated_classes_looks_split_nowhere() -> None:
    features, truth = ragged_pile(0)
    labels = infer_global_labels(features, LabelerConfig(K=15))
    check = labels.diagnostics["oversplit"]
    assert check["classes"] == labels.n_clusters and check["looks_split"] == 0 and not check["fires"]
    assert labels.warning is None
