"""Task samplers: GFSL piles without replacement, seeded random and fixed task sources, evaluation tasks."""

from __future__ import annotations

import numpy as np
import pytest

from mela.data.base import ImageSplit
from mela.data.samplers import (
    TaskShape,
    TaskSource,
    draw_task,
    evaluation_tasks,
    items_by_class,
    no_replacement_tasks,
    split_support_query,
)
from mela.errors import MelaError


def make_split(class_sizes: list[int], groups_of_classes: list[int] | None = None, seed: int = 0) -> ImageSplit:
    """An ImageSplit whose items are shuffled so item order does not follow class order."""
    labels = np.repeat(np.arange(len(class_sizes)), class_sizes)
    labels = labels[np.random.default_rng(seed).permutation(len(labels))]
    groups = None if groups_of_classes is None else np.asarray(groups_of_classes)[labels]
    images = np.zeros((len(labels), 2, 2, 1), dtype=np.uint8)
    names = ("all",) if groups_of_classes is None else tuple(f"g{i}" for i in range(max(groups_of_classes) + 1))
    return ImageSplit(images=images, labels=labels, groups=groups, group_names=names)


def assert_well_formed(tasks: np.ndarray, split: ImageSplit, shape: TaskShape) -> None:
    """n_ways distinct classes per task, each row one class, no item twice in a task, one group per task."""
    assert tasks.shape[1:] == (shape.n_ways, shape.per_class)
    labels = split.labels[tasks]  # (T, n_ways, per_class)
    assert (labels == labels[:, :, :1]).all()
    for task, task_labels in zip(tasks, labels, strict=True):
        assert len(set(task_labels[:, 0].tolist())) == shape.n_ways
        assert len(set(task.ravel().tolist())) == task.size
    groups = split.item_groups()[tasks]
    assert (groups == groups[:, :1, :1]).all()


def as_set(tasks: np.ndarray) -> list[bytes]:
    return sorted(bytes(t) for t in np.ascontiguousarray(tasks).reshape(len(tasks), -1))


def test_items_by_class_maps_each_group_and_class_to_its_sorted_items() -> None:
    split = make_split([3, 2, 4], groups_of_classes=[0, 1, 0])
    per_group = items_by_class(split)
    assert [sorted(g) for g in per_group] == [[0, 2], [1]]
    for g, class_items in enumerate(per_group):
        for cls, items in class_items.items():
            np.testing.assert_array_equal(items, np.flatnonzero((split.labels == cls) & (split.groups == g)))


def test_no_replacement_pile_never_reuses_an_image_and_every_task_is_well_formed() -> None:
    split = make_split([23, 17, 30, 8, 12, 25, 9, 14])
    shape = TaskShape(n_ways=3, n_shots=2, n_queries=2)
    tasks = no_replacement_tasks(items_by_class(split)[0], shape, np.random.default_rng(1))
    assert len(tasks) > 0
    assert len(np.unique(tasks)) == tasks.size
    assert_well_formed(tasks, split, shape)


def test_no_replacement_pile_stops_only_when_fewer_than_n_ways_classes_have_a_full_chunk_left() -> None:
    sizes = [23, 17, 30, 8, 12, 25, 9, 14]
    split = make_split(sizes)
    shape = TaskShape(n_ways=3, n_shots=2, n_queries=2)
    for seed in range(5):
        tasks = no_replacement_tasks(items_by_class(split)[0], shape, np.random.default_rng(seed))
        used = np.bincount(split.labels[tasks[:, :, 0]].ravel(), minlength=len(sizes))
        chunks = np.array(sizes) // shape.per_class  # 5, 4, 7, 2, 3, 6, 2, 3
        assert (used <= chunks).all()
        assert (used < chunks).sum() < shape.n_ways
        assert len(tasks) <= chunks.sum() // shape.n_ways


def test_no_replacement_pile_size_on_a_hand_sized_example() -> None:
    # per_class = 2: classes of 7, 5, 9, 1 items give 3, 2, 4, 0 chunks. With n_ways = 3 every task takes one
    # chunk of each of the three classes that have any, until class 1 runs out: 2 tasks.
    split = make_split([7, 5, 9, 1])
    tasks = no_replacement_tasks(items_by_class(split)[0], TaskShape(3, 1, 1), np.random.default_rng(0))
    assert tasks.shape == (2, 3, 2)
    assert 3 not in set(split.labels[tasks].ravel().tolist())
    # Two classes of 10 with per_class 3: 3 chunks each, one item of each class left over: 3 two-way tasks.
    split = make_split([10, 10])
    tasks = no_replacement_tasks(items_by_class(split)[0], TaskShape(2, 1, 2), np.random.default_rng(0))
    assert tasks.shape == (3, 2, 3)
    assert len(np.unique(tasks)) == 18
    # Too few classes with a chunk: an empty pile of the right shape.
    empty = no_replacement_tasks(items_by_class(make_split([5, 1]))[0], TaskShape(2, 1, 1), np.random.default_rng(0))
    assert empty.shape == (0, 2, 2)


def test_no_replacement_task_source_pile_is_fixed_and_each_epoch_visits_it_in_a_seeded_order() -> None:
    split = make_split([20] * 6, groups_of_classes=[0, 0, 0, 1, 1, 1])
    shape = TaskShape(n_ways=2, n_shots=1, n_queries=3)
    source = TaskSource(split, shape, no_replacement=True, seed=4)
    pile = source.pile()
    assert len(source) == len(pile)
    assert len(np.unique(pile)) == pile.size
    assert_well_formed(pile, split, shape)
    epoch0, epoch1 = source.epoch_tasks(0), source.epoch_tasks(1)
    assert not np.array_equal(epoch0, epoch1)
    assert as_set(epoch0) == as_set(epoch1) == as_set(pile)
    again = TaskSource(split, shape, no_replacement=True, seed=4)
    np.testing.assert_array_equal(again.epoch_tasks(1), epoch1)


def test_fixed_db_draws_the_same_tasks_for_each_index_across_epochs_and_instances() -> None:
    split = make_split([12] * 8)
    shape = TaskShape(n_ways=4, n_shots=1, n_queries=2)
    source = TaskSource(split, shape, no_replacement=False, fixed_db=True, train_db_size=10, seed=3)
    assert len(source) == 10
    epoch0 = source.epoch_tasks(0)
    assert epoch0.shape == (10, 4, 3)
    assert_well_formed(epoch0, split, shape)
    np.testing.assert_array_equal(source.epoch_tasks(7), epoch0)
    other = TaskSource(split, shape, no_replacement=False, fixed_db=True, train_db_size=10, seed=3)
    np.testing.assert_array_equal(other.epoch_tasks(2), epoch0)
    # Task i depends on i only, not on the database size.
    bigger = TaskSource(split, shape, no_replacement=False, fixed_db=True, train_db_size=15, seed=3)
    np.testing.assert_array_equal(bigger.epoch_tasks(0)[:10], epoch0)
    assert len({bytes(t) for t in epoch0}) > 1
    different_seed = TaskSource(split, shape, no_replacement=False, fixed_db=True, train_db_size=10, seed=4)
    assert not np.array_equal(different_seed.epoch_tasks(0), epoch0)


def test_random_mode_differs_across_epochs_but_repeats_for_the_same_seed_and_epoch() -> None:
    split = make_split([12] * 8)
    shape = TaskShape(n_ways=4, n_shots=1, n_queries=2)
    source = TaskSource(split, shape, no_replacement=False, fixed_db=False, train_db_size=10, seed=3)
    epoch0, epoch1 = source.epoch_tasks(0), source.epoch_tasks(1)
    assert_well_formed(epoch0, split, shape)
    assert not np.array_equal(epoch0, epoch1)
    np.testing.assert_array_equal(source.epoch_tasks(1), epoch1)
    other = TaskSource(split, shape, no_replacement=False, fixed_db=False, train_db_size=10, seed=3)
    np.testing.assert_array_equal(other.epoch_tasks(0), epoch0)
    np.testing.assert_array_equal(other.epoch_tasks(1), epoch1)


@pytest.mark.parametrize(("no_replacement", "fixed_db"), [(True, True), (False, True), (False, False)],
                         ids=["no_replacement", "fixed_db", "random"])
def test_tasks_never_mix_groups_and_every_group_is_used(no_replacement: bool, fixed_db: bool) -> None:
    # Group 0: 4 classes of 30 items; group 1: 3 classes of 10 items.
    split = make_split([30, 30, 30, 30, 10, 10, 10], groups_of_classes=[0, 0, 0, 0, 1, 1, 1])
    shape = TaskShape(n_ways=3, n_shots=1, n_queries=1)
    source = TaskSource(split, shape, no_replacement=no_replacement, fixed_db=fixed_db, train_db_size=60, seed=0)
    tasks = source.epoch_tasks(0)
    assert_well_formed(tasks, split, shape)
    task_groups = split.groups[tasks[:, 0, 0]]
    assert set(task_groups.tolist()) == {0, 1}


def test_split_support_query_gives_class_major_items_and_local_labels() -> None:
    tasks = np.arange(24).reshape(2, 3, 4)  # task 0: row j holds items 4j .. 4j+3
    support, support_labels, query, query_labels = split_support_query(tasks, n_shots=1)
    np.testing.assert_array_equal(support[0], [0, 4, 8])
    np.testing.assert_array_equal(query[0], [1, 2, 3, 5, 6, 7, 9, 10, 11])
    np.testing.assert_array_equal(support_labels, [[0, 1, 2], [0, 1, 2]])
    np.testing.assert_array_equal(query_labels, [[0, 0, 0, 1, 1, 1, 2, 2, 2]] * 2)
    support, support_labels, query, query_labels = split_support_query(tasks, n_shots=2)
    np.testing.assert_array_equal(support[1], [12, 13, 16, 17, 20, 21])
    np.testing.assert_array_equal(support_labels[1], [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(query[1], [14, 15, 18, 19, 22, 23])
    np.testing.assert_array_equal(query_labels[1], [0, 0, 1, 1, 2, 2])


def test_evaluation_task_i_is_identical_across_calls_and_independent_of_the_number_of_tasks() -> None:
    split = make_split([15] * 10, groups_of_classes=[0] * 5 + [1] * 5)
    shape = TaskShape(n_ways=3, n_shots=1, n_queries=4)
    five = evaluation_tasks(split, shape, 5)
    ten = evaluation_tasks(split, shape, 10)
    again = evaluation_tasks(split, shape, 10)
    assert [name for name, _ in five] == ["g0", "g1"]
    for (_, t5), (_, t10), (_, t10b) in zip(five, ten, again, strict=True):
        np.testing.assert_array_equal(t5[3], t10[3])
        np.testing.assert_array_equal(t5, t10[:5])
        np.testing.assert_array_equal(t10, t10b)
        assert_well_formed(t10, split, shape)
        assert len({bytes(t) for t in t10}) == 10


def test_draw_task_picks_distinct_classes_with_enough_images() -> None:
    split = make_split([2, 6, 6, 6])
    rng = np.random.default_rng(0)
    for _ in range(20):
        task = draw_task(items_by_class(split)[0], TaskShape(3, 2, 1), rng)
        assert sorted(set(split.labels[task[:, 0]].tolist())) == [1, 2, 3]


def test_too_few_classes_with_enough_images_is_a_clear_mela_error() -> None:
    split = make_split([5, 5, 2, 1])
    shape = TaskShape(n_ways=3, n_shots=2, n_queries=1)
    with pytest.raises(MelaError, match="only 2 classes have at least 3 images"):
        draw_task(items_by_class(split)[0], shape, np.random.default_rng(0))
    with pytest.raises(MelaError, match="only 2 classes"):
        evaluation_tasks(split, shape, 3)
    with pytest.raises(MelaError, match="no task can be formed without replacement"):
        TaskSource(split, shape, no_replacement=True)
    with pytest.raises(MelaError, match="only 2 classes"):
        TaskSource(split, shape, no_replacement=False, fixed_db=True, train_db_size=2).epoch_tasks(0)


def test_a_non_replacement_source_has_no_pile_for_random_tasks() -> None:
    source = TaskSource(make_split([6] * 4), TaskShape(2, 1, 1), no_replacement=False, train_db_size=3)
    assert len(source) == 3
    with pytest.raises(MelaError, match="no_replacement=true"):
        source.pile()


@pytest.mark.parametrize(("n_ways", "n_shots", "n_queries"), [(1, 1, 1), (5, 0, 15), (5, 1, -1)])
def test_bad_task_shapes_raise_a_mela_error_naming_the_values(n_ways: int, n_shots: int, n_queries: int) -> None:
    with pytest.raises(MelaError, match=f"n_ways={n_ways}, n_shots={n_shots}, n_queries={n_queries}"):
        TaskShape(n_ways, n_shots, n_queries)


def test_task_shape_per_class_is_shots_plus_queries_and_zero_queries_is_allowed() -> None:
    assert TaskShape(5, 1, 15).per_class == 16
    assert TaskShape(2, 3, 0).per_class == 3
