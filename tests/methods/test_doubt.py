"""The doubt score: hand-built keys whose mixed and split classes are known, and constructed piles."""

from __future__ import annotations

import numpy as np
import pytest

from mela.methods.doubt import class_doubt, labels_doubt, precision_at, truth_flags
from mela.methods.global_labels import infer_global_labels
from mela.methods.labeler import LabelerConfig, RaggedFeatures


def hand_pile(seed: int = 0):
    """12 classes in 16-d, 20 apart; 8 tasks of 6 ways (every class in 4 tasks); key noise 1 per key."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(12, 16)) * 20 / np.sqrt(32)
    order = [rng.permutation(12) for _ in range(4)]
    true = np.concatenate([o[:6] for o in order] + [o[6:] for o in order])
    keys = means[true] + rng.normal(size=(len(true), 16)) / np.sqrt(16)
    offsets = np.arange(0, len(true) + 1, 6)
    return keys, true, offsets


def test_a_mixed_class_has_the_most_spread_and_a_split_pair_are_each_others_rivals() -> None:
    keys, true, offsets = hand_pile()
    labels = true.copy()
    # Mixed: one key of class 1 (in a task without class 0) is labelled 0. Split: class 2's keys in tasks 0-3
    # keep 2, the others become 12.
    task_of = np.repeat(np.arange(len(offsets) - 1), 6)
    without_0 = [k for k in np.flatnonzero(true == 1) if 0 not in true[task_of == task_of[k]]]
    labels[without_0[0]] = 0
    labels[(true == 2) & (task_of >= 4)] = 12
    doubt = class_doubt(keys, labels, offsets, 1.0, 16.0)
    pos = {int(v): i for i, v in enumerate(doubt.labels)}
    assert doubt.spread.argmax() == pos[0] and doubt.spread[pos[0]] > 5
    assert doubt.rival[pos[2]] == pos[12] and doubt.rival[pos[12]] == pos[2]
    assert doubt.split[pos[2]] == doubt.split[pos[12]] > 0
    assert sorted(np.argsort(-doubt.score)[:3].tolist()) == sorted([pos[0], pos[2], pos[12]])
    assert (doubt.score >= 0).all() and 0.5 < doubt.calibration < 2  # the noise given is the noise there is
    assert doubt.contested[pos[0]] >= 1  # the stray key lies nearer class 1's centre
    # Members nearest the centre have the smallest distance; the stray key is the farthest of class 0.
    members = np.flatnonzero(doubt.member_class == pos[0])
    assert members[np.argmax(doubt.member_distance[members])] == without_0[0]


def test_two_classes_that_share_a_task_are_never_rivals() -> None:
    keys, true, offsets = hand_pile(1)
    doubt = class_doubt(keys, true, offsets, 1.0, 16.0)
    task_of = np.repeat(np.arange(len(offsets) - 1), 6)
    together = {(int(a), int(b)) for t in range(len(offsets) - 1) for a in true[task_of == t]
                for b in true[task_of == t]}
    assert all((int(doubt.labels[g]), int(doubt.labels[h])) not in together
               for g, h in enumerate(doubt.rival.tolist()) if h >= 0)


def test_truth_flags_and_precision_by_hand() -> None:
    member_class = np.array([0, 0, 1, 1, 2, 2, 3, -1])
    true = np.array([5, 6, 7, 7, 8, 8, 8, 9])  # 0 mixed; 2 and 3 are both class 8 (split); 1 clean
    flags = truth_flags(member_class, true, 4)
    assert flags.mixed.tolist() == [True, False, False, False]
    assert flags.split.tolist() == [False, False, True, True]
    result = precision_at(np.array([3.0, 0.0, 2.0, 1.0]), flags.wrong, fraction=0.5)
    assert result == {"fraction": 0.5, "top": 2, "precision": 1.0, "base_rate": 0.75, "wrong": 3, "classes": 4}


def gaussian_pile(n_classes: int, d: int, recurrence: int, per_key: int, separation: float, seed: int):
    """(T, 5, per_key, d) features of 5-way tasks over Gaussian classes (each class ``recurrence`` times) and
    the (T * 5,) true classes."""
    rng = np.random.default_rng(seed)
    means = separation * rng.normal(size=(n_classes, d)) / np.sqrt(d)
    tasks = np.concatenate([rng.permutation(n_classes).reshape(-1, 5) for _ in range(recurrence)])
    feats = means[tasks][:, :, None, :] + rng.normal(size=(*tasks.shape, per_key, d)) / np.sqrt(d)
    return feats, tasks.reshape(-1)


@pytest.mark.parametrize("kind", ["five-image keys, overlapping classes", "one-image keys, ragged tasks"])
def test_the_doubt_score_ranks_mixed_and_split_classes_first_on_constructed_piles(kind) -> None:
    if kind.startswith("five"):
        feats, true = gaussian_pile(200, 64, 4, 5, 0.4, 0)
    else:
        feats, true = gaussian_pile(200, 64, 4, 1, 0.9, 0)
        # Ragged: every other task loses its last class.
        ragged = RaggedFeatures.from_array(feats)
        keep = np.ones(len(true), dtype=bool)
        keep[np.arange(4, len(true), 10)] = False
        ways = np.full(feats.shape[0], 5)
        ways[::2] = 4
        feats = RaggedFeatures(ragged.items[keep], np.arange(int(keep.sum()) + 1),
                               np.concatenate([[0], np.cumsum(ways)]))
        true = true[keep]
    labels = infer_global_labels(feats, LabelerConfig(K=200, count_check=False))
    doubt = labels_doubt(feats, labels)
    flags = truth_flags(doubt.member_class, true, len(doubt.labels))
    result = precision_at(doubt.score, flags.wrong, 0.1)
    print(kind, result)  # the README quotes these
    assert 0.1 < result["base_rate"] < 0.5  # the pile has both clean and wrong classes, more than the top 10 %
    assert result["precision"] >= 0.7 and result["precision"] >= 2 * result["base_rate"], result


def test_bad_input_is_one_line() -> None:
    from mela.errors import MelaError

    with pytest.raises(MelaError, match="needs"):
        class_doubt(np.zeros((4, 2)), np.zeros(3, dtype=int), np.array([0, 4]), 1.0, 2.0)
    with pytest.raises(MelaError, match="positive"):
        class_doubt(np.zeros((4, 2)), np.zeros(4, dtype=int), np.array([0, 4]), 0.0, 2.0)


def test_keys_without_any_spread_still_get_a_score() -> None:
    from mela.methods.global_labels import GlobalLabels

    feats = np.repeat(np.eye(4)[None, :, None, :], 3, axis=0).repeat(2, axis=2)  # 3 tasks, identical images
    labels = GlobalLabels(np.eye(4), np.tile(np.arange(4), (3, 1)), diagnostics={"same_class_key_distance": 0.0,
                                                                                  "effective_dimension": 0.0})
    doubt = labels_doubt(feats, labels)
    assert np.isfinite(doubt.score).all() and len(doubt.labels) == 4
