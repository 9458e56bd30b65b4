"""global_labels.csv written, edited and read back: unedited it gives the same labels; each bad edit is one line."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from mela.errors import MelaError
from mela.methods.labels_file import (
    ClassIndex,
    changed_rows,
    cluster_names,
    read_labels_file,
    training_labels,
    write_labels_file,
)


@pytest.fixture()
def index() -> ClassIndex:
    """Three tasks: a (x, y), b (x, y, z), c (p, q)."""
    return ClassIndex.from_names(("a", "b", "c"), ("x", "y", "x", "y", "z", "p", "q"), np.array([0, 2, 5, 7]))


def written(tmp_path: Path, index: ClassIndex) -> tuple[Path, np.ndarray]:
    names = cluster_names(np.array([2, 4, 4, 2, 7, 9, 2]))
    return write_labels_file(tmp_path / "global_labels.csv", index, names, np.linspace(0, 1, 7)), names


def edit(path: Path, change) -> Path:
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    rows = change(rows)
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return path


def test_an_unedited_file_reads_back_the_same_names_and_training_labels(tmp_path, index) -> None:
    path, names = written(tmp_path, index)
    read = read_labels_file(path, index)
    assert read.names.tolist() == names.tolist() == ["g0", "g1", "g1", "g0", "g2", "g3", "g0"]
    assert training_labels(read.names).tolist() == [0, 1, 1, 0, 2, 3, 0]
    assert (read.changed, read.absent, read.left_out, read.rows) == (0, 0, 0, 7)
    assert len(read.sha256) == 64


def test_names_and_training_labels_keep_the_cluster_order_training_has_always_used() -> None:
    assigned = np.array([30, 5, 5, 22, 7, -1, 30, 10, 11, 12, 13, 14, 15, 16, 17, 18])
    names = cluster_names(assigned)
    assert names.tolist() == ["g12", "g0", "g0", "g11", "g1", "", "g12", "g2", "g3", "g4", "g5", "g6", "g7", "g8",
                              "g9", "g10"]
    # The previous releases' training labels: the clusters renumbered in order (np.unique), g10 after g9.
    expected = np.full(len(assigned), -1)
    expected[assigned >= 0] = np.unique(assigned[assigned >= 0], return_inverse=True)[1]
    assert training_labels(names).tolist() == expected.tolist()


def test_renaming_merging_splitting_and_leaving_out_are_counted(tmp_path, index) -> None:
    path, _ = written(tmp_path, index)

    def change(rows):
        rows[1][2] = "cat"  # rename g0 -> cat in a's x ...
        rows[4][2] = "cat"  # ... and b's y (both were g0): a rename changes nothing
        rows[7][2] = "cat"  # c's q: g0 -> cat, also a rename
        rows[5][2] = "g1"  # b's z: g2 merged into g1 (b's x is g1 too: not allowed without the setting)
        rows[6][2] = ""  # c's p left out
        del rows[3]  # b's x has no row
        return rows

    read = read_labels_file(edit(path, change), index, allow_shared=True)
    assert read.names.tolist() == ["cat", "g1", "", "cat", "g1", "", "cat"]
    assert (read.absent, read.left_out, read.changed) == (1, 2, 2)
    assert training_labels(read.names).tolist() == [0, 1, -1, 0, 1, -1, 0]


def test_changed_rows_matches_classes_one_to_one() -> None:
    inferred = np.array(["g0", "g0", "g0", "g1", "g1"], dtype=object)
    assert changed_rows(np.array(["A", "A", "A", "B", "B"], dtype=object), inferred) == 0
    assert changed_rows(np.array(["g0", "g0", "g0", "g0", "g1"], dtype=object), inferred) == 1
    assert changed_rows(np.array(["g0", "g0", "new", "g1", "g1"], dtype=object), inferred) == 1


@pytest.mark.parametrize("change, message", [
    (lambda rows: rows + [["zz", "x", "g0"]], "line 9: unknown task 'zz'"),
    (lambda rows: rows[:2] + [["a", "w", "g0"]] + rows[3:], "line 3: task 'a' has no local class 'w'"),
    (lambda rows: [r[:2] + r[3:] for r in rows], "no global_class column"),
    (lambda rows: rows[:2] + [rows[2][:2]] + rows[3:], "line 3: the row has no global_class column"),
    (lambda rows: rows[:1] + [r[:5] + ["feedfacefeedface"] for r in rows[1:]], "for another task collection"),
    (lambda rows: [r[:5] for r in rows[:1]] + [["q", "r", "g0", "", "g0"]] * 5, "for another task collection"),
    (lambda rows: rows + [rows[1]], "appears twice"),
    (lambda rows: rows[:1] + [r[:2] + [""] + r[3:] for r in rows[1:]], "no task class has a global class"),
    (lambda rows: rows[:3] + [rows[3][:2] + ["g9"] + rows[3][3:], rows[4][:2] + ["g9"] + rows[4][3:]] + rows[5:],
     "task 'b' gives two of its local classes the global class 'g9'"),
])
def test_each_bad_edit_is_refused_with_one_line(tmp_path, index, change, message) -> None:
    path, _ = written(tmp_path, index)
    with pytest.raises(MelaError, match=message) as info:
        read_labels_file(edit(path, change), index)
    assert "\n" not in str(info.value)


def test_a_missing_file_and_a_pile_fingerprint_are_checked(tmp_path) -> None:
    with pytest.raises(MelaError, match="no such file"):
        read_labels_file(tmp_path / "none.csv", ClassIndex.from_pile(np.zeros((2, 2, 1), dtype=int)))
    tasks = np.arange(8).reshape(2, 2, 2)
    assert ClassIndex.from_pile(tasks, "glyphs").fingerprint != ClassIndex.from_pile(tasks + 1, "glyphs").fingerprint
    assert ClassIndex.from_pile(tasks, "glyphs").fingerprint == ClassIndex.from_pile(tasks.copy(), "glyphs").fingerprint
