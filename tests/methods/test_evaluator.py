"""Few-shot evaluation: confidence intervals, per-task accuracy, seeded and per-group evaluation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from mela.data.base import ImageSplit
from mela.data.samplers import TaskShape, evaluation_tasks
from mela.methods.evaluator import evaluate_features, mean_confidence_interval, task_accuracies
from mela.methods.heads import LogisticRegressionHead, PrototypeHead


@pytest.mark.parametrize("confidence", [0.95, 0.9])
def test_mean_confidence_interval_half_width_equals_scipy_t_interval(confidence: float) -> None:
    values = np.random.default_rng(0).uniform(40, 90, size=37)
    mean, half = mean_confidence_interval(values, confidence)
    low, high = stats.t.interval(confidence, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
    assert mean == pytest.approx(values.mean(), rel=1e-12)
    assert half == pytest.approx((high - low) / 2, rel=1e-10)


def test_mean_confidence_interval_on_a_hand_worked_sample_and_degenerate_inputs() -> None:
    # Values 1, 2, 3: mean 2, sample std 1, sem 1/sqrt(3); t_{0.975, 2} = 4.302653.
    mean, half = mean_confidence_interval(np.array([1.0, 2.0, 3.0]))
    assert mean == 2.0
    assert half == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    one_mean, one_half = mean_confidence_interval(np.array([5.0]))
    assert one_mean == 5.0 and math.isnan(one_half)
    empty_mean, empty_half = mean_confidence_interval(np.array([]))
    assert math.isnan(empty_mean) and math.isnan(empty_half)


def _hand_features() -> torch.Tensor:
    x = [0, 1, 2, 10, 9, 8,   # task 0: class 0 items 0-2, class 1 items 3-5
         0, 1, 7, 10, 9, 3]   # task 1: class 0 items 6-8, class 1 items 9-11
    return torch.tensor([[float(v), 0.0] for v in x], dtype=torch.float64)


def test_task_accuracies_with_prototypes_on_hand_built_features_give_the_known_answers() -> None:
    # 1-shot: prototypes are the first item of each class (0 and 10).
    # Task 0 queries 1, 2 (class 0) and 9, 8 (class 1): all right -> 1.0.
    # Task 1 queries 1 (right), 7 (nearer 10: wrong), 9 (right), 3 (nearer 0: wrong) -> 0.5.
    tasks = np.array([[[0, 1, 2], [3, 4, 5]], [[6, 7, 8], [9, 10, 11]]])
    accs = task_accuracies(_hand_features(), tasks, 1, PrototypeHead)
    np.testing.assert_allclose(accs, [1.0, 0.5])
    np.testing.assert_allclose(task_accuracies(_hand_features(), tasks, 1, PrototypeHead, chunk=1), [1.0, 0.5])
    # 2-shot: task 0 prototypes 0.5 and 9.5, queries 2 and 8 right; task 1 prototypes 0.5 and 9.5, queries
    # 7 (class 0, nearer 9.5) and 3 (class 1, nearer 0.5) both wrong -> [1.0, 0.0].
    np.testing.assert_allclose(task_accuracies(_hand_features(), tasks, 2, PrototypeHead), [1.0, 0.0])


def _two_group_split(seed: int = 0) -> tuple[ImageSplit, torch.Tensor]:
    """Group "a": 6 well separated classes; group "b": 6 classes of pure noise. 12 items per class."""
    rng = np.random.default_rng(seed)
    per_class, n_classes, d = 12, 12, 8
    labels = np.repeat(np.arange(n_classes), per_class)
    groups = (labels >= 6).astype(np.int64)
    centres = 20.0 * np.eye(n_classes, d * 2)[:, :d] + 5.0 * np.eye(n_classes, d)
    features = centres[labels] * (groups[:, None] == 0) + rng.normal(size=(len(labels), d))
    images = np.zeros((len(labels), 2, 2, 1), dtype=np.uint8)
    split = ImageSplit(images=images, labels=labels, groups=groups, group_names=("a", "b"))
    return split, torch.from_numpy(features)


def test_evaluate_features_reports_each_group_and_is_reproducible() -> None:
    split, features = _two_group_split()
    shape = TaskShape(n_ways=3, n_shots=1, n_queries=4)
    first = evaluate_features(features, split, shape, 20, PrototypeHead)
    second = evaluate_features(features, split, shape, 20, PrototypeHead)
    assert first == second
    assert set(first.per_group) == {"a", "b"}
    assert first.per_group["a"].acc == 100.0 and first.per_group["a"].ci == 0.0
    assert first.per_group["a"].n_tasks == first.per_group["b"].n_tasks == 20
    assert 10.0 < first.per_group["b"].acc < 70.0  # noise: near chance (33%)
    assert first.overall.n_tasks == 40
    assert first.overall.acc == pytest.approx((first.per_group["a"].acc + first.per_group["b"].acc) / 2)


def test_evaluate_features_per_group_accuracy_equals_an_independent_nearest_mean_computation() -> None:
    split, features = _two_group_split(1)
    shape = TaskShape(n_ways=3, n_shots=2, n_queries=3)
    result = evaluate_features(features, split, shape, 15, PrototypeHead, is_norm=True)
    normed = features.numpy() / np.linalg.norm(features.numpy(), axis=1, keepdims=True)
    for name, tasks in evaluation_tasks(split, shape, 15):
        accs = []
        for task in tasks:
            protos = normed[task[:, :2]].mean(axis=1)  # (n_ways, d)
            queries = normed[task[:, 2:]]  # (n_ways, 3, d)
            predicted = np.linalg.norm(queries[:, :, None] - protos[None, None], axis=-1).argmin(-1)
            accs.append((predicted == np.arange(3)[:, None]).mean() * 100)
        mean, half = np.mean(accs), stats.t.ppf(0.975, len(accs) - 1) * stats.sem(accs)
        assert result.per_group[name].acc == pytest.approx(mean, rel=1e-12)
        assert result.per_group[name].ci == pytest.approx(half, rel=1e-9)


def test_evaluation_tasks_of_a_two_group_split_never_mix_groups() -> None:
    split, _ = _two_group_split()
    for name, tasks in evaluation_tasks(split, TaskShape(3, 1, 2), 30):
        group = ("a", "b").index(name)
        assert (split.groups[tasks] == group).all()


def test_evaluate_features_with_the_logistic_head_separates_the_clean_group() -> None:
    split, features = _two_group_split(2)
    result = evaluate_features(features, split, TaskShape(3, 1, 2), 5, lambda: LogisticRegressionHead(C=1.0))
    assert result.per_group["a"].acc == 100.0


def test_eval_protocol_builds_the_named_head_with_its_options_and_rejects_unknown_names():
    from mela.errors import MelaError
    from mela.methods.evaluator import EvalProtocol
    from mela.methods.heads import LogisticRegressionHead, PrototypeHead, RidgeHead

    logistic = EvalProtocol(C=0.5, use_bias=False).head_factory()()
    assert isinstance(logistic, LogisticRegressionHead) and (logistic.C, logistic.fit_intercept) == (0.5, False)
    assert isinstance(EvalProtocol(head="prototype").head_factory()(), PrototypeHead)
    assert EvalProtocol(head="ridge", lam=0.1).head_factory()().lam == 0.1
    assert isinstance(EvalProtocol(head="ridge").head_factory()(), RidgeHead)
    with pytest.raises(MelaError, match="unknown few-shot head 'svm'"):
        EvalProtocol(head="svm").head_factory()


def test_evaluating_inside_collection_tasks_fits_each_task_on_its_own_support_and_skips_single_image_classes(
) -> None:
    from mela.data.tasks import from_pairs, support_query
    from mela.methods.evaluator import evaluate_collection_features
    from mela.methods.heads import PrototypeHead

    rng = np.random.default_rng(0)
    # Two tasks over 1-d "images" whose pixel value is their feature: class c sits at 10 * c.
    tasks = []
    for sizes in ([3, 2, 1], [2, 4]):
        images, labels = [], []
        for c, n in enumerate(sizes):
            for _ in range(n):
                images.append(np.full((2, 2, 1), 10 * c + rng.integers(0, 3), dtype=np.uint8))
                labels.append(f"k{c}")
        tasks.append((np.stack(images), labels))
    collection = from_pairs(tasks)
    features = torch.from_numpy(collection.images.reshape(len(collection.images), -1)[:, :1].astype(np.float64))
    result = evaluate_collection_features(features, collection, PrototypeHead, shots=None, is_norm=False, seed=4)
    # By hand: classes are 10 apart and vary by at most 2, so prototypes score every query right.
    assert result.accuracy.acc == 100.0 and result.accuracy.n_tasks == 2
    assert result.unscored_classes == 1 and result.unscored_tasks == 0
    assert result.per_task.tolist() == [100.0, 100.0] and result.task_ids.tolist() == [0, 1]
    # The split is the seeded support_query of each task: half of each class as support, at least one.
    episode = support_query(collection, 1, np.random.default_rng([4, 1]), None)
    assert sorted(np.bincount(episode.support_labels).tolist()) == [1, 2]
    assert len(episode.query) == 3


def _hand_built_collection() -> tuple[object, torch.Tensor]:
    """Three tasks over 2-d features chosen by hand (each image's pixels are distinct; its feature is looked up).

    t0: class "a" three images tight around (10, 10); class "b" three images on the unit circle, 120 degrees
    apart (pairwise sqrt(3)); class "c" one image at the centre (0, 0). t1: two classes of two images, far
    apart. t2: two single-image classes (no query: not scorable).
    """
    from mela.data.tasks import from_pairs

    points = {"t0": {"a": [(10.0, 10.0), (10.1, 10.0), (10.0, 10.1)],
                     "b": [(1.0, 0.0), (-0.5, math.sqrt(3) / 2), (-0.5, -math.sqrt(3) / 2)],
                     "c": [(0.0, 0.0)]},
              "t1": {"a": [(0.0, 0.0), (0.0, 0.2)], "b": [(5.0, 5.0), (5.0, 5.2)]},
              "t2": {"a": [(3.0, 3.0)], "b": [(4.0, 4.0)]}}
    table, pairs = [], []
    for classes in points.values():
        images, labels = [], []
        for name, features in classes.items():
            for feature in features:
                images.append(np.full((2, 2, 1), len(table), dtype=np.uint8))  # pixel value = row of ``table``
                labels.append(name)
                table.append(feature)
        pairs.append((np.stack(images), labels))
    collection = from_pairs(pairs, task_ids=list(points))
    rows_of_table = torch.from_numpy(collection.images[:, 0, 0, 0].astype(np.int64))
    features = torch.tensor(table, dtype=torch.float64)[rows_of_table]
    return collection, features


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_one_shot_view_fits_one_support_image_per_class_and_keeps_single_image_classes_as_distractors(
        seed: int) -> None:
    from mela.data.tasks import support_query
    from mela.methods.evaluator import evaluate_collection_features

    collection, features = _hand_built_collection()
    one_shot = evaluate_collection_features(features, collection, PrototypeHead, shots=1, is_norm=False, seed=seed)
    # By hand, whichever image of each class is the support: in t0 a query of "a" is within 0.15 of the "a"
    # support and 14 from the others (right); a query of "b" is 1 from the distractor "c" and sqrt(3) from the
    # "b" support (wrong, with the distractor kept): 2 of 4 queries right. In t1 the classes are 7 apart: 2 of 2.
    # t2 has no query and is left out; t0's "c" is counted as an unscored class.
    assert one_shot.per_task.tolist() == [50.0, 100.0] and one_shot.task_ids.tolist() == [0, 1]
    assert one_shot.accuracy.acc == 75.0 and one_shot.accuracy.n_tasks == 2
    assert one_shot.unscored_classes == 1 and one_shot.unscored_tasks == 1
    # One support image per class (the distractor included), the rest of each class as queries.
    episode = support_query(collection, 0, np.random.default_rng([seed, 0]), 1)
    assert np.bincount(episode.support_labels).tolist() == [1, 1, 1]
    assert np.bincount(episode.query_labels, minlength=3).tolist() == [2, 2, 0]


def test_the_one_shot_supports_follow_the_seed_and_are_the_same_for_every_model() -> None:
    from mela.data.tasks import support_query
    from mela.methods.evaluator import evaluate_collection_features

    collection, features = _hand_built_collection()
    # A model whose t1 features make the 1-shot accuracy depend on which image is each class's support:
    # "a" at 0 and 3, "b" at 2 and 8 (on one axis); the four choices score 50, 50, 0 and 50 %.
    t1_rows = np.concatenate(collection.task_classes(1))
    model_1 = features.clone()
    model_1[torch.from_numpy(t1_rows)] = torch.tensor([[0.0, 0.0], [0.0, 3.0], [0.0, 2.0], [0.0, 8.0]],
                                                       dtype=torch.float64)
    model_2 = model_1.clone()
    model_2[torch.from_numpy(np.concatenate(collection.task_classes(0)))] *= 2.0  # another model, t0 differs
    seen = set()
    for seed in range(8):
        support = support_query(collection, 1, np.random.default_rng([seed, 1]), 1).support
        queries = [row for row in t1_rows.tolist() if row not in support.tolist()]
        # By hand: each query goes to the nearer of the two support images.
        where = {row: float(model_1[row, 1]) for row in t1_rows.tolist()}
        label = {row: int(row in collection.task_classes(1)[1]) for row in t1_rows.tolist()}
        right = [label[min(support.tolist(), key=lambda s, q=q: abs(where[q] - where[s]))] == label[q] for q in queries]
        expected = 100.0 * sum(right) / len(right)
        first = evaluate_collection_features(model_1, collection, PrototypeHead, shots=1, is_norm=False, seed=seed)
        second = evaluate_collection_features(model_2, collection, PrototypeHead, shots=1, is_norm=False, seed=seed)
        assert first.per_task[1] == second.per_task[1] == expected  # the same supports for both models
        seen.add(expected)
    assert seen == {0.0, 50.0}  # the seed chooses the supports
    # The 1-shot support of a class is the first image of the half view's permutation: a subset of its support.
    half = support_query(collection, 0, np.random.default_rng([5, 0]), None)
    one = support_query(collection, 0, np.random.default_rng([5, 0]), 1)
    assert set(one.support.tolist()) <= set(half.support.tolist())


def test_the_per_task_accuracies_average_to_the_reported_mean_exactly_and_name_their_tasks() -> None:
    split, features = _two_group_split()
    shape = TaskShape(n_ways=3, n_shots=1, n_queries=4)
    result = evaluate_features(features, split, shape, 20, PrototypeHead)
    assert result.per_task.shape == (40,)  # 20 tasks of group "a", then 20 of group "b"
    assert float(result.per_task.mean()) == result.overall.acc
    assert float(result.per_task[:20].mean()) == result.per_group["a"].acc
    other_model = evaluate_features(features + 1.0, split, shape, 20, LogisticRegressionHead)
    assert other_model.tasks_digest == result.tasks_digest  # the same tasks for every model
    assert evaluate_features(features, split, shape, 21, PrototypeHead).tasks_digest != result.tasks_digest
    five_shot = TaskShape(n_ways=3, n_shots=5, n_queries=4)
    assert evaluate_features(features, split, five_shot, 20, PrototypeHead).tasks_digest != result.tasks_digest
