"""mela tasks make: heterogeneous, deterministic task collections whose files load back exactly."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from mela.cli import main as mela_main
from mela.data.registry import get_dataset_spec
from mela.data.task_maker import MakeSettings, fit_recurrences, make_tasks, to_collection, write_tasks
from mela.data.tasks import load_tasks
from mela.errors import MelaError
from mela.tasks_cli import main as tasks_main
from mela.tasks_cli import parse_range


@pytest.fixture(scope="module")
def split(synthetic_dataset: str):
    """24 classes of 20 16x16 grey images."""
    return get_dataset_spec(synthetic_dataset).load(Path("."), "train")


def test_made_tasks_written_as_folder_and_manifest_load_back_to_the_same_collection_and_truth(
        split, tmp_path: Path) -> None:
    made = make_tasks(split, MakeSettings(n_tasks=25, ways=(2, 5), shots=(1, 3), recur=(1, 10), seed=4))
    expected = to_collection(made, split)
    folder = load_tasks(write_tasks(made, split, tmp_path / "f", "folder"))
    manifest = load_tasks(write_tasks(made, split, tmp_path / "m", "manifest"))
    for loaded in (folder, manifest):
        assert loaded.task_ids == expected.task_ids and loaded.class_names == expected.class_names
        assert np.array_equal(loaded.images, expected.images)
        for name in ("task_offsets", "class_offsets", "item_image", "class_truth"):
            assert np.array_equal(getattr(loaded, name), getattr(expected, name)), name
        assert loaded.truth_names == expected.truth_names
    # The truth is the made class: every task class's images really are of its true class.
    for task in made:
        t = expected.task_ids.index(task.task_id)
        by_name = dict(zip(expected.task_class_names(t), expected.task_truth(t).tolist(), strict=True))
        for name, cls, items in zip(task.local_names, task.classes, task.items, strict=True):
            assert expected.truth_names[by_name[name]] == str(cls)
            assert (split.labels[items] == cls).all()
    assert len(manifest.images) == len(np.unique(np.concatenate([i for t in made for i in t.items])))


def test_the_same_seed_makes_the_same_tasks_and_another_seed_others(split) -> None:
    settings = MakeSettings(n_tasks=30, ways=(2, 6), shots=(1, 4), seed=11)

    def content(made):
        return [(t.task_id, t.local_names, t.classes, [i.tolist() for i in t.items]) for t in made]

    assert content(make_tasks(split, settings)) == content(make_tasks(split, settings))
    assert content(make_tasks(split, settings)) != content(make_tasks(split, MakeSettings(30, (2, 6), (1, 4),
                                                                                          seed=12)))


def test_ways_and_images_per_class_cover_their_ranges_and_classes_are_unbalanced(split) -> None:
    made = make_tasks(split, MakeSettings(n_tasks=200, ways=(3, 6), shots=(1, 4), recur=(1, 60), seed=0))
    ways = [len(t.classes) for t in made]
    assert min(ways) == 3 and max(ways) == 6 and set(ways) == {3, 4, 5, 6}
    shots = [len(i) for t in made for i in t.items]
    assert set(shots) == {1, 2, 3, 4}
    assert any(len({len(i) for i in t.items}) > 1 for t in made)
    assert all(len(set(t.classes)) == len(t.classes) for t in made)  # distinct classes inside a task


def test_class_recurrence_stays_in_range_and_is_skewed_few_often_many_rarely(split) -> None:
    made = make_tasks(split, MakeSettings(n_tasks=40, ways=(2, 4), shots=(1, 2), recur=(1, 30), seed=2))
    uses = np.bincount(np.concatenate([t.classes for t in made]))
    uses = uses[uses > 0]
    assert uses.min() >= 1 and uses.max() <= 30
    assert uses.max() >= 3 * np.median(uses)  # a 1/r law: the most used class far above the typical one
    counts = fit_recurrences(5000, np.full(2000, 30), 1, np.random.default_rng(0))
    used = counts[counts > 0]
    assert counts.sum() == 5000 and used.max() <= 30
    # P(r) ~ 1/r on 1..30: P(r <= 3) = H(3) / H(30) = 0.46, P(r >= 20) = 0.16 (independent arithmetic)
    harmonic = np.cumsum(1 / np.arange(1, 31))
    assert (used <= 3).mean() == pytest.approx(harmonic[2] / harmonic[-1], abs=0.06)
    assert (used >= 20).mean() == pytest.approx((harmonic[-1] - harmonic[18]) / harmonic[-1], abs=0.05)
    with pytest.raises(MelaError, match="the tasks need 400 task classes"):
        fit_recurrences(400, np.full(10, 30), 1, np.random.default_rng(0))


def test_local_names_are_shuffled_and_collide_across_tasks_for_different_classes(split) -> None:
    made = make_tasks(split, MakeSettings(n_tasks=100, ways=(3, 5), shots=(1, 2), seed=5))
    meaning = defaultdict(set)
    for task in made:
        for name, cls in zip(task.local_names, task.classes, strict=True):
            meaning[name].add(cls)
    assert len([n for n, classes in meaning.items() if len(classes) > 1]) >= 5
    assert {"0", "a", "A", "class 1"} <= set(meaning)
    orders = [t.local_names for t in made if t.local_names[0] in ("0", "1", "2", "3", "4")]
    assert any(list(o) != sorted(o) for o in orders)


def test_images_are_shared_between_tasks_unless_overlap_is_off(split) -> None:
    def uses(made):
        return np.bincount(np.concatenate([i for t in made for i in t.items]))

    shared = make_tasks(split, MakeSettings(n_tasks=60, ways=(3, 5), shots=(2, 4), recur=(5, 30), seed=1))
    assert uses(shared).max() > 1
    alone = make_tasks(split, MakeSettings(n_tasks=60, ways=(3, 5), shots=(1, 2), recur=(1, 30), overlap=False,
                                           seed=1))
    assert uses(alone).max() == 1
    with pytest.raises(MelaError, match="allow overlap"):
        make_tasks(split, MakeSettings(n_tasks=200, ways=(5, 8), shots=(3, 4), overlap=False))


def test_mela_tasks_make_writes_a_loadable_collection_and_info_describes_it(
        synthetic_dataset: str, workspace: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "tasks"
    argv = ["make", "--from", synthetic_dataset, "--out", str(out), "--tasks", "12", "--ways", "2-4",
            "--shots", "1-3", "--format", "manifest", "--seed", "3"]
    assert tasks_main(argv) == 0
    assert "wrote 12 tasks" in capsys.readouterr().out
    info = json.loads((out / "make_info.json").read_text())
    assert info["tasks"] == 12 and info["settings"]["ways"] == [2, 4]
    assert tasks_main(["info", str(out / "manifest.csv"), "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["tasks"] == 12 and described["task_classes"] == info["task_classes"]
    assert tasks_main(argv) == 2
    assert "is not an empty folder" in capsys.readouterr().err
    assert mela_main(["tasks", "info", str(out)]) == 0  # `mela tasks` reaches the same command
    assert f"{out / 'manifest.csv'}: 12 tasks" in capsys.readouterr().out
    assert parse_range("3-8") == (3, 8) and parse_range("5") == (5, 5)
    with pytest.raises(MelaError, match="not a range"):
        parse_range("3-x")


def test_a_heavy_load_still_spreads_recurrences_over_the_whole_range_and_fills_every_slot() -> None:
    from mela.data.task_maker import fit_recurrences

    # The glyph case: 355 classes must fill 5,468 task classes with recurrences in 1-30 (mean about 15).
    caps = np.full(355, 30)
    out = fit_recurrences(5468, caps, 1, np.random.default_rng(0))
    assert out.sum() == 5468
    assert out.min() <= 2 and out.max() == 30
    # A lighter load leaves more classes rare: the median recurrence drops.
    lighter = fit_recurrences(3000, caps, 1, np.random.default_rng(0))
    assert lighter.sum() == 3000 and np.median(lighter) < np.median(out)
