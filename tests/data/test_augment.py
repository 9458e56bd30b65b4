"""Batched augmentation: each op against an independent reference, and pipeline determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mela.data.augment import (
    Augmenter,
    color_jitter,
    default_padding,
    normalize,
    pad_border,
    random_crop,
    random_hflip,
    rotate90,
    rotation_expand,
)
from mela.errors import MelaError

MEAN = (0.47, 0.45, 0.40)
STD = (0.28, 0.27, 0.29)


def _uint8_batch(seed: int, batch: int = 4, size: int = 32, channels: int = 3) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, size=(batch, size, size, channels), dtype=np.uint8))


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_normalize_matches_an_independent_numpy_computation() -> None:
    images = _uint8_batch(0)
    expected = (images.numpy().astype(np.float64) / 255.0 - np.array(MEAN)) / np.array(STD)
    expected = expected.transpose(0, 3, 1, 2)
    out = normalize(images, MEAN, STD)
    assert out.shape == (4, 3, 32, 32)
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)


def test_normalize_with_one_mean_per_channel_missing_raises_a_mela_error() -> None:
    with pytest.raises(MelaError, match="images have 3 channels but mean has 1"):
        normalize(_uint8_batch(0), (0.5,), (0.5,))


def test_normalize_rejects_float_images_with_a_mela_error() -> None:
    with pytest.raises(MelaError, match="uint8"):
        normalize(torch.rand(2, 8, 8, 3), MEAN, STD)


@pytest.mark.parametrize("size", [32, 84])
def test_random_crop_keeps_the_input_size(size: int) -> None:
    x = torch.rand(3, 3, size, size)
    assert random_crop(x, default_padding(size), _generator(0)).shape == x.shape


def test_random_crop_with_zero_padding_is_the_identity() -> None:
    x = torch.rand(3, 3, 20, 20)
    assert torch.equal(random_crop(x, 0, _generator(0)), x)


@pytest.mark.parametrize(("pad_mode", "numpy_mode"), [("zeros", "constant"), ("reflect", "reflect"),
                                                      ("replicate", "edge")])
def test_each_crop_is_a_window_of_the_padded_image_at_some_offset(pad_mode: str, numpy_mode: str) -> None:
    torch.manual_seed(0)
    padding, size = 3, 12
    x = torch.rand(16, 2, size, size) + 0.5  # strictly positive, so padding zeros are unambiguous
    out = random_crop(x, padding, _generator(1), pad_mode)
    offsets = set()
    for index in range(len(x)):
        padded = np.pad(x[index].numpy(), ((0, 0), (padding, padding), (padding, padding)), mode=numpy_mode)
        matches = [
            (dy, dx)
            for dy in range(2 * padding + 1)
            for dx in range(2 * padding + 1)
            if np.array_equal(padded[:, dy : dy + size, dx : dx + size], out[index].numpy())
        ]
        assert len(matches) == 1
        offsets.add(matches[0])
    # Offsets really vary from image to image.
    assert len(offsets) > 4


def test_pad_border_reflects_and_replicates_a_hand_built_image() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]).view(1, 1, 3, 3)
    reflect = torch.tensor([
        [9, 8, 7, 8, 9, 8, 7], [6, 5, 4, 5, 6, 5, 4], [3, 2, 1, 2, 3, 2, 1], [6, 5, 4, 5, 6, 5, 4],
        [9, 8, 7, 8, 9, 8, 7], [6, 5, 4, 5, 6, 5, 4], [3, 2, 1, 2, 3, 2, 1],
    ], dtype=torch.float32)
    replicate = torch.tensor([
        [1, 1, 1, 2, 3, 3, 3], [1, 1, 1, 2, 3, 3, 3], [1, 1, 1, 2, 3, 3, 3], [4, 4, 4, 5, 6, 6, 6],
        [7, 7, 7, 8, 9, 9, 9], [7, 7, 7, 8, 9, 9, 9], [7, 7, 7, 8, 9, 9, 9],
    ], dtype=torch.float32)
    assert torch.equal(pad_border(x, 2, "reflect")[0, 0], reflect)
    assert torch.equal(pad_border(x, 2, "replicate")[0, 0], replicate)
    assert pad_border(x, 2, "zeros")[0, 0, 0].abs().sum() == 0


def test_crops_of_a_white_image_stay_white_unless_padding_with_zeros() -> None:
    white = torch.ones(32, 1, 16, 16)
    for mode in ("reflect", "replicate"):
        assert torch.equal(random_crop(white, 3, _generator(2), mode), white)
    black_frames = random_crop(white, 3, _generator(2), "zeros")
    assert (black_frames == 0).any()


def test_reflect_padding_as_wide_as_the_image_and_unknown_pad_modes_raise_mela_errors() -> None:
    with pytest.raises(MelaError, match="pad_mode=replicate"):
        pad_border(torch.rand(1, 1, 3, 3), 3, "reflect")
    with pytest.raises(MelaError, match="valid modes: reflect, replicate, zeros"):
        random_crop(torch.rand(1, 1, 8, 8), 2, None, "wrap")
    with pytest.raises(MelaError, match="valid modes"):
        Augmenter(MEAN, STD, data_aug=True, pad_mode="black")


def test_random_crop_on_a_non_square_batch_keeps_its_shape() -> None:
    x = torch.rand(2, 1, 10, 14)
    assert random_crop(x, 2, _generator(0)).shape == (2, 1, 10, 14)


def test_random_hflip_reverses_the_width_axis_of_flipped_images_and_leaves_the_rest() -> None:
    x = torch.rand(32, 3, 6, 7)
    out = random_hflip(x, _generator(0))
    flipped = 0
    for original, result in zip(x, out, strict=True):
        reversed_width = torch.from_numpy(original.numpy()[:, :, ::-1].copy())
        if torch.equal(result, reversed_width):
            flipped += 1
        else:
            assert torch.equal(result, original)
    assert 6 < flipped < 26


def test_color_jitter_with_zero_strength_is_the_identity() -> None:
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(color_jitter(x, 0.0, _generator(0)), x)


def test_color_jitter_stays_in_the_unit_range_and_changes_each_image() -> None:
    x = torch.rand(8, 3, 8, 8)
    out = color_jitter(x, 0.4, _generator(0))
    assert out.min() >= 0 and out.max() <= 1
    assert all(not torch.allclose(a, b) for a, b in zip(out, x, strict=True))


def test_color_jitter_on_grey_images_scales_brightness_and_contrast_only() -> None:
    # A constant grey image has no contrast or saturation: only brightness can change it.
    x = torch.full((4, 1, 5, 5), 0.5)
    out = color_jitter(x, 0.4, _generator(0))
    per_image = out.flatten(1)
    assert torch.all(per_image.std(dim=1) == 0)
    assert torch.all((per_image[:, 0] >= 0.5 * 0.6 - 1e-6) & (per_image[:, 0] <= 0.5 * 1.4 + 1e-6))


def test_rotate90_four_times_is_the_identity() -> None:
    x = torch.rand(2, 3, 5, 5)
    assert torch.equal(rotate90(x, 4), x)


def test_rotate90_once_matches_numpy_rot90_on_the_spatial_axes() -> None:
    x = torch.rand(2, 3, 5, 5)
    expected = np.rot90(x.numpy(), k=1, axes=(2, 3)).copy()
    assert np.array_equal(rotate90(x, 1).numpy(), expected)


def test_rotation_expand_adds_three_rotated_copies_with_shifted_labels() -> None:
    x = torch.rand(3, 1, 4, 4)
    labels = torch.tensor([0, 2, 1])
    images, expanded = rotation_expand(x, labels, n_classes=5)
    assert images.shape == (12, 1, 4, 4)
    assert expanded.tolist() == [0, 2, 1, 5, 7, 6, 10, 12, 11, 15, 17, 16]
    for r in range(4):
        expected = np.rot90(x.numpy(), k=r, axes=(2, 3))
        assert np.array_equal(images[3 * r : 3 * r + 3].numpy(), expected)


def test_rotation_expand_on_non_square_images_raises_a_mela_error() -> None:
    with pytest.raises(MelaError, match="square images, got 4x6"):
        rotation_expand(torch.rand(2, 1, 4, 6), torch.tensor([0, 1]), n_classes=2)


def test_default_padding_is_eight_at_84_pixels_and_scales_with_size() -> None:
    assert default_padding(84) == 8
    assert default_padding(32) == 3
    assert default_padding(5) == 1


def test_augmenter_is_deterministic_for_a_seed_and_differs_across_seeds() -> None:
    images = _uint8_batch(3, batch=6)
    augment = Augmenter(MEAN, STD, data_aug=True)
    first = augment(images, _generator(7))
    again = augment(images, _generator(7))
    other = augment(images, _generator(8))
    assert first.shape == (6, 3, 32, 32)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_augmenter_without_data_aug_only_normalizes() -> None:
    images = _uint8_batch(4)
    augment = Augmenter(MEAN, STD, data_aug=False)
    assert torch.equal(augment(images, _generator(0)), normalize(images, MEAN, STD))


def test_augmenter_handles_one_channel_glyph_images() -> None:
    images = _uint8_batch(5, batch=3, size=32, channels=1)
    out = Augmenter((0.5,), (0.5,), data_aug=True)(images, _generator(0))
    assert out.shape == (3, 1, 32, 32)
    assert torch.isfinite(out).all()


def test_augmenter_with_every_transform_switched_off_only_normalizes() -> None:
    images = _uint8_batch(6)
    augment = Augmenter(MEAN, STD, data_aug=True, crop=False, jitter=0.0, flip=False)
    assert torch.equal(augment(images, _generator(0)), normalize(images, MEAN, STD))


def test_augmenter_switches_run_exactly_the_transforms_left_on() -> None:
    images = _uint8_batch(7, batch=8)
    unit = images.permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    crop_only = Augmenter(MEAN, STD, data_aug=True, jitter=0.0, flip=False, pad_mode="replicate")
    expected = (random_crop(unit, default_padding(32), _generator(3), "replicate") - mean) / std
    torch.testing.assert_close(crop_only(images, _generator(3)), expected)
    jitter_only = Augmenter(MEAN, STD, data_aug=True, crop=False, jitter=0.3, flip=False)
    jittered = color_jitter(unit, 0.3, _generator(4))
    torch.testing.assert_close(jitter_only(images, _generator(4)), (jittered - mean) / std)
    flip_only = Augmenter(MEAN, STD, data_aug=True, crop=False, jitter=0.0)
    torch.testing.assert_close(flip_only(images, _generator(5)), (random_hflip(unit, _generator(5)) - mean) / std)
