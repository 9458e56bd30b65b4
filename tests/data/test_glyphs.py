"""The shipped glyphs data set: contract of the file and of the loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mela.data import glyphs
from mela.data.registry import get_dataset_spec, load_split, missing_files

ARRAYS = glyphs.load_arrays()
SCRIPTS = ("latin_upper", "latin_lower", "digit", "symbol", "greek", "cyrillic", "hiragana", "katakana", "kanji")
SPLIT_CLASSES = {"train": 355, "val": 90, "test": 111}


def test_file_has_every_contract_array_with_its_dtype():
    expected = {
        "images": np.uint8,
        "labels": np.int32,
        "class_script": np.int16,
        "class_split": np.int8,
        "image_face": np.int32,
    }
    for name, dtype in expected.items():
        assert ARRAYS[name].dtype == dtype, name
    assert ARRAYS["images"].shape[1:] == (32, 32)
    for name in ("class_chars", "script_names", "face_names"):
        assert ARRAYS[name].dtype.kind == "U", name


def test_rows_are_sorted_by_class_then_design():
    labels, faces = ARRAYS["labels"].astype(np.int64), ARRAYS["image_face"].astype(np.int64)
    key = labels * 10_000 + faces
    assert np.all(np.diff(key) > 0)


def test_there_are_556_classes_and_40_distinct_designs_each():
    counts = np.bincount(ARRAYS["labels"])
    assert len(counts) == len(ARRAYS["class_chars"]) == 556
    assert counts.min() >= 30 and np.all(counts == 40)
    assert len(ARRAYS["images"]) == 22_240


def test_every_class_character_is_unique():
    assert len(set(ARRAYS["class_chars"].tolist())) == len(ARRAYS["class_chars"])


def test_nine_scripts_with_documented_class_counts():
    names = ARRAYS["script_names"].tolist()
    assert names == list(SCRIPTS)
    assert np.bincount(ARRAYS["class_script"]).tolist() == [26, 16, 10, 54, 30, 26, 48, 46, 300]


def test_lowercase_letters_that_look_like_their_capital_are_not_classes():
    chars = set(ARRAYS["class_chars"].tolist())
    assert not chars & set("copsvwxz")
    assert {"a", "b", "d", "e", "g"} <= chars


def test_images_are_bright_ink_on_black_with_an_empty_border():
    images = ARRAYS["images"]
    assert images[:, 0, :].max() == 0 and images[:, :, -1].max() == 0
    assert np.all(images.reshape(len(images), -1).max(axis=1) > 128)


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_split_has_documented_class_count_and_contiguous_labels(split):
    data = glyphs.load(Path("."), split)
    assert data.n_classes == SPLIT_CLASSES[split]
    assert np.array_equal(np.unique(data.labels), np.arange(SPLIT_CLASSES[split]))
    assert data.images.shape == (40 * SPLIT_CLASSES[split], 32, 32, 1) and data.images.dtype == np.uint8
    assert len(data.class_names) == len(data.superclass) == data.n_classes


def test_no_class_appears_in_two_splits():
    names = [set(glyphs.load(Path("."), split).class_names) for split in ("train", "val", "test")]
    assert not names[0] & names[1] and not names[0] & names[2] and not names[1] & names[2]
    assert len(names[0] | names[1] | names[2]) == 556


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_every_script_is_present_in_every_split(split):
    data = glyphs.load(Path("."), split)
    assert set(data.superclass.tolist()) == set(range(9))


def test_loading_twice_gives_identical_arrays():
    first, second = glyphs.load(Path("."), "val"), glyphs.load(Path("."), "val")
    assert np.array_equal(first.images, second.images) and np.array_equal(first.labels, second.labels)
    assert first.class_names == second.class_names


def test_loaded_split_keeps_each_class_images_and_name_together():
    data = glyphs.load(Path("."), "test")
    original = ARRAYS["class_chars"].tolist().index(data.class_names[0])
    assert np.array_equal(data.images[data.labels == 0, :, :, 0], ARRAYS["images"][ARRAYS["labels"] == original])


def test_data_set_is_registered_and_needs_no_workspace_files(tmp_path):
    spec = get_dataset_spec("glyphs")
    assert spec.mean == glyphs.MEAN and len(spec.std) == 1
    assert missing_files("glyphs", "train", tmp_path) == []
    assert load_split("glyphs", "val", tmp_path).n_classes == 90


def test_declared_mean_and_std_match_the_train_pixels():
    pixels = glyphs.load(Path("."), "train").images.astype(np.float64) / 255.0
    assert pixels.mean() == pytest.approx(glyphs.MEAN[0], abs=5e-4)
    assert pixels.std() == pytest.approx(glyphs.STD[0], abs=5e-4)


def test_unknown_split_is_a_one_line_mela_error():
    from mela.errors import MelaError

    with pytest.raises(MelaError, match="no split 'dev'"):
        glyphs.load(Path("."), "dev")
