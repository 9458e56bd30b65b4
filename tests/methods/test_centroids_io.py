"""A user-given centroids file: the good one loads, every kind of bad one is one line naming the file."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from mela.errors import MelaError
from mela.methods.centroids_io import load_centroids_file


def _good(tmp_path: Path) -> np.ndarray:
    centroids = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    np.savez(tmp_path / "centroids.npz", centroids=centroids)
    return centroids


def test_a_run_folder_or_its_centroids_file_loads_as_float64(tmp_path: Path) -> None:
    centroids = _good(tmp_path)
    for ref in (tmp_path, tmp_path / "centroids.npz", str(tmp_path / "centroids.npz")):
        loaded = load_centroids_file(ref, feat_dim=4, min_count=5)
        assert loaded.dtype == np.float64 and np.array_equal(loaded, centroids.astype(np.float64))


def _message(path: Path, feat_dim: int = 4, min_count: int = 1) -> str:
    with pytest.raises(MelaError) as caught:
        load_centroids_file(path, feat_dim, min_count)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_a_missing_file_names_the_path(tmp_path: Path) -> None:
    assert _message(tmp_path / "nope.npz") == (f"no centroids at {tmp_path / 'nope.npz'}; give the centroids.npz of a "
                                              "finished learn_labeler run (or the run's folder)")
    assert _message(tmp_path).startswith(f"no centroids at {tmp_path / 'centroids.npz'};")


@pytest.mark.parametrize("content", ["text", "truncated_zip", "pickle"])
def test_a_file_that_is_not_an_npz_is_one_line(tmp_path: Path, content: str) -> None:
    path = tmp_path / "centroids.npz"
    if content == "text":
        path.write_text("centroids: 1 2 3")
    elif content == "truncated_zip":
        _good(tmp_path)
        path.write_bytes(path.read_bytes()[:100])
    else:
        path.write_bytes(pickle.dumps({"centroids": np.zeros((2, 4))}))
    assert _message(path).startswith(f"{path} is not a readable .npz file (")


def test_a_bare_npy_array_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "centroids.npy"
    np.save(path, np.zeros((3, 4)))
    assert _message(path).startswith(f"{path} is not a centroids .npz (it is a bare .npy array);")


def test_an_npz_without_centroids_lists_what_it_has(tmp_path: Path) -> None:
    path = tmp_path / "other.npz"
    np.savez(path, keys=np.zeros((3, 4)), labels=np.arange(3))
    assert _message(path).startswith(f"{path} has no 'centroids' array (it has keys, labels);")


def test_a_pickled_object_array_is_not_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "centroids.npz"
    np.savez(path, centroids=np.array([{"a": 1}, None], dtype=object))
    assert "Object arrays cannot be loaded when allow_pickle=False" in _message(path)


def test_centroids_of_another_dimension_say_both_dimensions(tmp_path: Path) -> None:
    _good(tmp_path)
    assert _message(tmp_path, feat_dim=640).endswith(
        "centroids have dimension 4 but the labeler model's features have 640; use centroids from a run with the "
        "same label_recovery_model and feat_dim")


@pytest.mark.parametrize(("array", "expected"), [
    (np.zeros(4), "should be a (K, 4) array of numbers, found float64 of shape (4,)"),
    (np.array([["a", "b", "c", "d"]]), "should be a (K, 4) array of numbers, found <U1 of shape (1, 4)"),
    (np.tile([0.0, np.nan, 1.0, 2.0], (5, 1)), "centroids contain NaN or infinite values"),
    (np.zeros((2, 4)), "2 centroids, but a task's 5 classes need 5 distinct ones"),
])
def test_malformed_centroid_arrays_are_refused(tmp_path: Path, array: np.ndarray, expected: str) -> None:
    path = tmp_path / "centroids.npz"
    np.savez(path, centroids=array)
    assert expected in _message(path, min_count=5)


def test_a_corrupt_member_inside_a_valid_zip_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "centroids.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("centroids.npy", b"\x93NUMPY garbage")
    assert "its 'centroids' array is unreadable (ValueError" in _message(path)
