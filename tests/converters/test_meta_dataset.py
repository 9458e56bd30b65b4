"""Meta-Dataset per-class TFRecords -> the aircraft / cu_birds / vgg_flower pickles the mixed loader reads."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mela.converters.meta_dataset import PARTS_DIRNAME, class_splits, convert_source
from mela.converters.tfrecord import write_tfrecord
from mela.data.seed_datasets import load_mixed, mixed_source_path
from mela.errors import MelaError


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _quadrants(class_id: int) -> np.ndarray:
    """A 2x2 image whose four pixels encode the class, so nearest resizing is checkable."""
    return np.array([[[class_id, 0, 0], [0, class_id, 0]], [[0, 0, class_id], [class_id, class_id, 1]]], np.uint8)


def write_records(records_dir: Path, counts: tuple[int, int, int], per_class: int, spec: bool = True) -> None:
    records_dir.mkdir(parents=True, exist_ok=True)
    n = sum(counts)
    for cid in range(n):
        write_tfrecord(
            records_dir / f"{cid}.tfrecords", [{"image": _png(_quadrants(cid)), "label": cid} for _ in range(per_class)]
        )
    if spec:
        (records_dir / "dataset_spec.json").write_text(
            json.dumps(
                {
                    "name": records_dir.name,
                    "classes_per_split": {"TRAIN": counts[0], "VALID": counts[1], "TEST": counts[2]},
                    "class_names": {str(i): f"class-{i}" for i in range(n)},
                    "file_pattern": "{}.tfrecords",
                }
            )
        )


def test_conversion_writes_84x84_pickles_per_split_that_the_mixed_loader_reads(tmp_path: Path) -> None:
    write_records(tmp_path / "cu_birds", (3, 2, 2), per_class=2)
    written = convert_source("cu_birds", tmp_path, progress=False)
    assert [p.name for p in written] == ["cub_train.pkl", "cub_val.pkl", "cub_test.pkl"]
    with open(written[1], "rb") as handle:
        val = pickle.load(handle)
    assert val["data"].shape == (4, 84, 84, 3) and val["data"].dtype == np.uint8
    assert val["labels"].tolist() == [3, 3, 4, 4]
    assert val["class_names"] == ["class-3", "class-4"]
    # nearest-neighbour resize: each source pixel becomes a 42x42 block
    assert val["data"][0, :42, :42].tolist() == [[[3, 0, 0]] * 42] * 42
    assert val["data"][0, 83, 83].tolist() == [3, 3, 1]
    assert not (tmp_path / "cu_birds" / PARTS_DIRNAME).exists()


def test_converted_sources_load_as_the_mixed_data_set(tmp_path: Path) -> None:
    for source, counts in (("aircraft", (2, 2, 2)), ("cu_birds", (3, 2, 2)), ("vgg_flower", (2, 3, 2))):
        write_records(tmp_path / source, counts, per_class=1)
        convert_source(source, tmp_path, progress=False)
    val = load_mixed(tmp_path, "val")
    assert val.n_classes == 2 + 2 + 3
    assert val.images.shape == (7, 84, 84, 3)
    assert val.groups.tolist() == [0, 0, 1, 1, 2, 2, 2]


def test_without_dataset_spec_the_published_aircraft_split_70_15_15_is_used(tmp_path: Path) -> None:
    write_records(tmp_path / "aircraft", (70, 15, 15), per_class=1, spec=False)
    splits = class_splits("aircraft", tmp_path / "aircraft")
    assert [len(splits[s]) for s in ("train", "val", "test")] == [70, 15, 15]
    assert splits["val"][0] == 70 and splits["test"][-1] == 99
    convert_source("aircraft", tmp_path, progress=False)
    with open(mixed_source_path(tmp_path, "aircraft", "test"), "rb") as handle:
        test = pickle.load(handle)
    assert test["labels"].tolist() == list(range(85, 100))
    assert "class_names" not in test


def test_a_rerun_reuses_classes_already_converted(tmp_path: Path) -> None:
    write_records(tmp_path / "vgg_flower", (2, 2, 2), per_class=1)
    parts = tmp_path / "vgg_flower" / PARTS_DIRNAME
    parts.mkdir()
    marker = np.full((1, 84, 84, 3), 200, np.uint8)
    np.savez(parts / "0.npz", images=marker)
    convert_source("vgg_flower", tmp_path, progress=False)
    with open(mixed_source_path(tmp_path, "vgg_flower", "train"), "rb") as handle:
        train = pickle.load(handle)
    assert (train["data"][0] == 200).all()  # the cached part, not the record
    assert train["data"][1, 0, 0].tolist() == [1, 0, 0]


def test_a_missing_class_file_is_named_with_how_to_produce_it(tmp_path: Path) -> None:
    write_records(tmp_path / "cu_birds", (3, 2, 2), per_class=1)
    (tmp_path / "cu_birds" / "5.tfrecords").unlink()
    with pytest.raises(MelaError, match=r"5.tfrecords is missing \(1 of 7 class files\)"):
        convert_source("cu_birds", tmp_path, progress=False)


def test_a_broken_record_aborts_with_file_and_offset_and_keeps_finished_classes(tmp_path: Path) -> None:
    write_records(tmp_path / "cu_birds", (3, 2, 2), per_class=2)
    broken = tmp_path / "cu_birds" / "4.tfrecords"
    raw = bytearray(broken.read_bytes())
    raw[20] ^= 0xFF
    broken.write_bytes(bytes(raw))
    with pytest.raises(MelaError, match=rf"{broken}: bad data checksum in the record at byte offset 0"):
        convert_source("cu_birds", tmp_path, progress=False)
    done = sorted(p.name for p in (tmp_path / "cu_birds" / PARTS_DIRNAME).iterdir())
    assert done == ["0.npz", "1.npz", "2.npz", "3.npz"]
