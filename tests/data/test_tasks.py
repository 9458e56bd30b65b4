"""Task collections: the ragged layout, the three input forms, every bad input, truth, held-out split."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mela.data.tasks import (
    LoadOptions,
    from_pairs,
    load_folder,
    load_manifest,
    load_tasks,
    support_query,
    tasks_holdout,
)
from mela.errors import MelaError

RNG = np.random.default_rng(7)
PIXELS = RNG.integers(0, 256, (8, 6, 5), dtype=np.uint8)  # eight distinct 6x5 grey images


def save(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


# Two tasks; image 2 is in both (class "b" of job10, class "0" of job2).
TASKS = {"job10": {"a": [0, 1], "b": [2], "c": [3]}, "job2": {"0": [2, 5], "1": [4, 6, 7]}}
TRUTH = {("job10", "a"): "cat", ("job10", "b"): "dog", ("job10", "c"): "owl", ("job2", "0"): "dog",
         ("job2", "1"): "cat"}


def write_folder(root: Path, tasks: dict = TASKS, truth: dict | None = TRUTH) -> Path:
    for task, classes in tasks.items():
        for name, images in classes.items():
            for i in images:
                save(root / task / name / f"img{i}.png", PIXELS[i])
    if truth:
        write_csv(root / "truth.csv", ["task", "local_label", "global_label"], [[*k, v] for k, v in truth.items()])
    return root


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_manifest(root: Path, tasks: dict = TASKS, truth: dict | None = TRUTH) -> Path:
    rows = []
    for i in range(len(PIXELS)):
        save(root / "images" / f"img{i}.png", PIXELS[i])
    for task, classes in tasks.items():
        for name, images in classes.items():
            rows.extend([f"images/img{i}.png", task, name] for i in images)
    if truth:
        write_csv(root / "truth.csv", ["task", "local_label", "global_label"], [[*k, v] for k, v in truth.items()])
    return write_csv(root / "manifest.csv", ["path", "task", "local_label"], rows)


def as_dict(collection) -> dict:
    """{task: {class: [pixel bytes]}}: the content, independent of the layout."""
    return {collection.task_ids[t]: {name: [collection.images[r].tobytes() for r in rows]
                                     for name, rows in zip(collection.task_class_names(t),
                                                           collection.task_classes(t), strict=True)}
            for t in range(collection.n_tasks)}


def test_python_pairs_load_into_the_hand_worked_ragged_layout_with_shared_images_stored_once() -> None:
    pairs = [(PIXELS[[0, 1, 2, 3]], ["a", "a", "b", "c"], ["cat", "cat", "dog", "owl"]),
             (list(PIXELS[[2, 4, 5, 6, 7]]), [0, 1, 0, 1, 1], ["dog", "cat", "dog", "cat", "cat"])]
    c = from_pairs(pairs, task_ids=["job10", "job2"])
    assert c.task_ids == ("job2", "job10")  # natural order: 2 before 10
    assert c.class_names == ("0", "1", "a", "b", "c")
    assert c.task_offsets.tolist() == [0, 2, 5] and c.ways.tolist() == [2, 3]
    assert c.class_offsets.tolist() == [0, 2, 5, 7, 8, 9] and c.class_sizes.tolist() == [2, 3, 2, 1, 1]
    # image rows in order of first use: 2, 5, 4, 6, 7, 0, 1, (2 again), 3
    assert c.item_image.tolist() == [0, 1, 2, 3, 4, 5, 6, 0, 7]
    assert np.array_equal(c.images[:, :, :, 0], PIXELS[[2, 5, 4, 6, 7, 0, 1, 3]])
    assert c.item_task.tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1]
    assert c.item_local_class.tolist() == [0, 0, 1, 1, 1, 0, 0, 1, 2]
    assert c.truth_names == ("cat", "dog", "owl") and c.class_truth.tolist() == [1, 0, 0, 1, 2]
    summary = c.summary()
    assert (summary["images_in_several_tasks"], summary["single_image_classes"]) == (1, 2)


def test_a_folder_a_manifest_and_python_pairs_of_the_same_tasks_give_the_same_collection(tmp_path: Path) -> None:
    folder = load_folder(write_folder(tmp_path / "f"))
    manifest = load_manifest(write_manifest(tmp_path / "m"))
    pairs = [(PIXELS[sum(classes.values(), [])], sum([[n] * len(v) for n, v in classes.items()], []),
              sum([[TRUTH[(task, n)]] * len(v) for n, v in classes.items()], [])) for task, classes in TASKS.items()]
    python = from_pairs(pairs, task_ids=list(TASKS))
    for other in (manifest, python):
        assert np.array_equal(folder.images, other.images)
        assert (folder.task_ids, folder.class_names, folder.truth_names) == (other.task_ids, other.class_names,
                                                                             other.truth_names)
        for name in ("task_offsets", "class_offsets", "item_image", "class_truth"):
            assert np.array_equal(getattr(folder, name), getattr(other, name)), name
    assert as_dict(folder) == {t: {n: [PIXELS[i][..., None].tobytes() for i in v] for n, v in cl.items()}
                               for t, cl in TASKS.items()}
    assert len(folder.images) == 8  # image 2 is two files in the folder form, one row here
    assert load_tasks(tmp_path / "m" / "manifest.csv").fingerprint() == folder.fingerprint()


def test_a_shared_size_is_kept_mixed_sizes_are_resized_and_colour_makes_every_image_rgb(tmp_path: Path) -> None:
    assert load_folder(write_folder(tmp_path / "same")).image_shape == (6, 5, 1)
    root = write_folder(tmp_path / "mixed", truth=None)
    big = RNG.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    save(root / "job2" / "1" / "zz.png", big)
    mixed = load_folder(root)
    assert mixed.image_shape == (84, 84, 3) and "resized to 84x84" in mixed.notes[0]
    sized = load_folder(root, LoadOptions(image_size=12))
    expected = np.asarray(Image.fromarray(big).resize((12, 12), Image.BILINEAR))  # PIL's bilinear, independently
    assert np.array_equal(sized.images[sized.task_classes(0)[1][-1]], expected)
    grey = np.asarray(Image.fromarray(PIXELS[0]).convert("RGB").resize((12, 12), Image.BILINEAR))
    assert np.array_equal(sized.images[sized.task_classes(1)[0][0]], grey)


def test_the_pairs_form_takes_mixed_sizes_and_pil_images() -> None:
    pairs = [([PIXELS[0], Image.fromarray(PIXELS[1]), np.zeros((3, 4, 3), np.uint8)], ["x", "y", "y"])]
    c = from_pairs(pairs, options=LoadOptions(image_size=6))
    assert c.image_shape == (6, 6, 3) and c.ways.tolist() == [2] and c.class_truth is None


BAD_CASES = {
    "one class": ({"t1": {"a": [0, 1]}, "t2": {"a": [2], "b": [3]}}, "task 't1' of .* has only class 'a'",
                  "too_few_classes"),
    "image in two classes": ({"t1": {"a": [0], "b": [0, 1]}, "t2": {"a": [2], "b": [3]}},
                             "task 't1' puts .*img0.png in class 'b' and in class 'a'", "image_in_two_classes"),
}


# (A folder cannot put one file in two class folders: copies are two files, so that case is manifest-only.)
@pytest.mark.parametrize(("form", "case"), [("folder", "one class"), ("manifest", "one class"),
                                            ("manifest", "image in two classes")])
def test_a_bad_task_is_one_line_naming_it_or_is_skipped_and_counted(tmp_path: Path, form: str, case: str) -> None:
    tasks, message, reason = BAD_CASES[case]
    path = write_folder(tmp_path, tasks, None) if form == "folder" else write_manifest(tmp_path, tasks, None)
    with pytest.raises(MelaError, match=message + ".*skip_bad_tasks") as caught:
        load_tasks(path)
    assert "\n" not in str(caught.value)
    loaded = load_tasks(path, LoadOptions(skip_bad_tasks=True))
    assert loaded.task_ids == ("t2",) and loaded.skip_counts() == {reason: 1}
    assert loaded.skipped[0].task == "t1"


def test_a_class_folder_without_images_and_an_unreadable_image_name_the_task_and_file(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "f", truth=None)
    (root / "job2" / "2").mkdir()
    with pytest.raises(MelaError, match=r"task 'job2' class '2' has no image \(.*job2/2\); add images"):
        load_folder(root)
    (root / "job10" / "a" / "img0.png").write_bytes(b"not a png")
    with pytest.raises(MelaError, match=r"every task .* was skipped \(empty_class: 1, unreadable_image: 1\)"):
        load_folder(root, LoadOptions(skip_bad_tasks=True))
    (root / "job2" / "2").rmdir()
    with pytest.raises(MelaError, match=r"task 'job10': cannot read image .*job10/a/img0.png"):
        load_folder(root)
    assert load_folder(root, LoadOptions(skip_bad_tasks=True)).task_ids == ("job2",)
    (root / "job2" / "notes.txt").write_text("hello")
    assert "ignored 1 entries" in load_folder(root, LoadOptions(skip_bad_tasks=True)).notes[0]


def test_a_missing_file_and_a_duplicate_row_name_the_manifest_line_task_and_file(tmp_path: Path) -> None:
    path = write_manifest(tmp_path, truth=None)
    rows = list(csv.reader(path.open()))
    write_csv(path, rows[0], [*rows[1:], ["images/img0.png", "job10", "a"]])
    with pytest.raises(MelaError, match=r"manifest.csv line 11: task 'job10' class 'a' lists .*img0.png again "
                                        r"\(first at .*line 2\); remove the duplicate row"):
        load_manifest(path)
    write_csv(path, rows[0], [*rows[1:], ["images/gone.png", "job2", "1"]])
    with pytest.raises(MelaError, match=r"line 11: task 'job2' file .*gone.png does not exist; fix the path"):
        load_manifest(path)
    skipped = load_manifest(path, LoadOptions(skip_bad_tasks=True))
    assert skipped.task_ids == ("job10",) and skipped.skip_counts() == {"missing_file": 1}


def test_an_empty_collection_and_a_manifest_missing_a_column_are_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(MelaError, match="holds no tasks"):
        load_folder(tmp_path / "empty")
    with pytest.raises(MelaError, match="header but no rows"):
        load_manifest(write_csv(tmp_path / "m.csv", ["path", "task", "local_label"], []))
    with pytest.raises(MelaError, match=r"has no 'local_label' column \(found: path,task,label\)"):
        load_manifest(write_csv(tmp_path / "m.csv", ["path", "task", "label"], [["a.png", "t", "x"]]))
    with pytest.raises(MelaError, match="holds no tasks"):
        from_pairs([])
    root = write_folder(tmp_path / "all_bad", {"t1": {"a": [0]}, "t2": {"b": [1]}}, None)
    with pytest.raises(MelaError, match=r"every task of .* was skipped \(too_few_classes: 2\)"):
        load_folder(root, LoadOptions(skip_bad_tasks=True))


def test_truth_must_cover_every_task_class_and_name_only_known_ones(tmp_path: Path) -> None:
    root = write_folder(tmp_path, truth={k: v for k, v in TRUTH.items() if k != ("job2", "1")})
    with pytest.raises(MelaError, match="has no global label for task 'job2' class '1'"):
        load_folder(root)
    write_csv(root / "truth.csv", ["task", "local_label", "global_label"],
              [[*k, v] for k, v in {**TRUTH, ("job3", "z"): "cat"}.items()])
    with pytest.raises(MelaError, match="names task 'job3' class 'z', which is not in"):
        load_folder(root)
    truth = write_csv(tmp_path / "t.csv", ["task", "local_label", "global_label"], [[*k, v] for k, v in TRUTH.items()])
    assert load_folder(root, LoadOptions(truth=truth)).truth_names == ("cat", "dog", "owl")


def test_the_held_out_split_is_a_seeded_tenth_disjoint_and_covering() -> None:
    kept, held = tasks_holdout(95, 0.1, seed=1)
    assert len(held) == 10 and len(kept) == 85
    assert sorted(np.concatenate([kept, held]).tolist()) == list(range(95))
    assert np.array_equal(held, tasks_holdout(95, 0.1, seed=1)[1])
    assert not np.array_equal(held, tasks_holdout(95, 0.1, seed=2)[1])
    assert len(tasks_holdout(3, 0.1)[1]) == 1 and len(tasks_holdout(5, 0.0)[1]) == 0
    with pytest.raises(MelaError, match="at least 2 tasks"):
        tasks_holdout(1, 0.1)


def test_a_held_out_subset_keeps_its_tasks_exactly_and_can_compact_its_images(tmp_path: Path) -> None:
    c = load_folder(write_folder(tmp_path))
    kept, held_out = tasks_holdout(c.n_tasks, 0.5, seed=0)
    train, held = c.subset(kept), c.subset(held_out)
    assert sorted(train.task_ids + held.task_ids) == sorted(c.task_ids)
    for part in (train, held):
        t = c.task_ids.index(part.task_ids[0])
        assert as_dict(part)[part.task_ids[0]] == as_dict(c)[c.task_ids[t]]
        assert part.task_truth(0).tolist() == c.task_truth(t).tolist()
        compact = part.subset([0], compact=True)
        assert len(compact.images) == len(np.unique(part.item_image)) and as_dict(compact) == as_dict(part)


def test_support_query_splits_inside_each_class_and_counts_single_image_classes(tmp_path: Path) -> None:
    c = load_folder(write_folder(tmp_path))  # job2: "0" 2 images, "1" 3; job10: "a" 2, "b" 1, "c" 1
    split = support_query(c, 1, np.random.default_rng(0))
    assert split.n_ways == 3 and split.unscored_classes == 2
    assert split.support_labels.tolist() == [0, 1, 2] and split.query_labels.tolist() == [0]
    assert set(split.support[:1].tolist() + split.query.tolist()) == set(c.task_classes(1)[0].tolist())
    dropped = support_query(c, 1, np.random.default_rng(0), keep_unscored=False)
    assert dropped is None  # one scorable class is no classification task
    five = support_query(c, 0, np.random.default_rng(0), shots=5)
    assert five.support_labels.tolist() == [0, 1, 1] and five.query_labels.tolist() == [0, 1]
    single = from_pairs([(PIXELS[:2], ["a", "b"])])
    assert support_query(single, 0, np.random.default_rng(0)) is None

