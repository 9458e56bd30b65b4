"""Preprocessing: raw images become exactly the pixels the training loaders make, with one note per conversion."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mela.data.augment import normalize
from mela.data.images import read_image, resize_image
from mela.data.preprocessing import Preprocessing
from mela.errors import MelaError

GREY16 = Preprocessing((16, 16), 1, (0.35,), (0.4,))
RGB16 = Preprocessing((16, 16), 3, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))


def _save(path, array):
    Image.fromarray(array).save(path)
    return path


def test_a_file_at_the_model_size_gives_the_pixels_the_folder_loaders_read(tmp_path):
    rng = np.random.default_rng(0)
    grey = _save(tmp_path / "g.png", rng.integers(0, 256, (16, 16), dtype=np.uint8))
    colour = _save(tmp_path / "c.png", rng.integers(0, 256, (20, 12, 3), dtype=np.uint8))
    np.testing.assert_array_equal(GREY16.pixels([grey])[0], read_image(grey, True, (16, 16)))
    np.testing.assert_array_equal(GREY16.pixels([colour])[0], read_image(colour, True, (16, 16)))
    np.testing.assert_array_equal(RGB16.pixels([colour])[0], read_image(colour, False, (16, 16)))


def test_arrays_pil_images_and_files_of_one_picture_give_identical_pixels(tmp_path):
    rng = np.random.default_rng(1)
    colour = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    path = _save(tmp_path / "c.png", colour)
    from_file, from_array, from_pil = GREY16.pixels([path, colour, Image.fromarray(colour)])
    np.testing.assert_array_equal(from_file, from_array)
    np.testing.assert_array_equal(from_file, from_pil)
    expected = resize_image(np.asarray(Image.fromarray(colour).convert("L"))[..., None], 16)
    np.testing.assert_array_equal(from_array, expected)


def test_grey_images_are_repeated_into_three_channels_for_an_rgb_model():
    grey = np.random.default_rng(2).integers(0, 256, (16, 16), dtype=np.uint8)
    out = RGB16.pixels([grey])[0]
    assert out.shape == (16, 16, 3)
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], grey)


def test_each_kind_of_conversion_is_noted_once_however_many_images_need_it():
    notes = []
    colour = np.zeros((32, 32, 3), dtype=np.uint8)
    GREY16.pixels([colour] * 5 + [np.zeros((16, 16), np.uint8)], notes.append)
    assert len(notes) == 2
    assert "converted to grey" in notes[0] and "resized to 16x16" in notes[1]
    quiet = []
    GREY16.pixels([np.zeros((16, 16, 1), np.uint8)], quiet.append)
    assert quiet == []


def test_tensor_is_the_training_normalisation():
    pixels = np.random.default_rng(3).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    expected = normalize(torch.from_numpy(pixels), RGB16.mean, RGB16.std)
    assert torch.equal(RGB16.tensor(pixels), expected)
    assert RGB16.tensor(pixels).shape == (2, 3, 16, 16)


def test_the_record_round_trips_and_a_damaged_one_is_one_line():
    assert Preprocessing.from_dict(RGB16.to_dict(), "x") == RGB16
    assert Preprocessing.of_training((16, 16, 3), (0.5,), (0.2,)).mean == (0.5, 0.5, 0.5)
    with pytest.raises(MelaError, match="model.pt: its preprocessing record"):
        Preprocessing.from_dict({"channels": 1}, "model.pt")
    with pytest.raises(MelaError, match="std"):
        Preprocessing((16, 16), 1, (0.5,), (0.0,))
    with pytest.raises(MelaError, match="1 or 3 channels"):
        Preprocessing((16, 16), 2, (0.5, 0.5), (0.2, 0.2))


def test_a_badly_shaped_array_is_refused_naming_its_position():
    with pytest.raises(MelaError, match="image 1: an image must be"):
        GREY16.pixels([np.zeros((16, 16), np.uint8), np.zeros((16, 16), np.float32)])
