"""Batched image augmentation with plain torch ops, on whatever device the batch is on.

Augmenting a whole (B, C, H, W) batch on the training device avoids a per-image
PIL pipeline in data-loader workers. The pipeline order is fixed:

    uint8 (B, H, W, C) -> float [0, 1] (B, C, H, W) -> random crop -> colour jitter
    -> horizontal flip -> per-channel normalisation

Crops pad by reflecting the border (``pad_mode="reflect"``, the default) or by
replicating it (``"replicate"``); ``"zeros"`` (black, what the reference did) draws a
dark frame around light-background images, which the network then sees only in
training. Each transform can be switched off on its own (``crop``, ``jitter=0``,
``flip``). Jitter works on the un-normalised [0, 1] image, where brightness, contrast and
saturation have their usual meaning. Every random draw goes through an optional
``torch.Generator``; draws are made on the generator's device and moved to the
batch's, so a seeded CPU generator gives the same augmentation on any device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mela.errors import MelaError

# ITU-R 601 luma weights, the usual RGB -> grey conversion.
_LUMA = (0.299, 0.587, 0.114)


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Uniform [0, 1) draws from ``generator`` (on its own device), delivered on ``device``."""
    source = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=source).to(device)


def _check_batch(x: torch.Tensor, what: str) -> None:
    if x.dim() != 4:
        raise MelaError(f"{what} takes a (batch, channels, height, width) batch, got shape {tuple(x.shape)}")


def to_unit_float(x_uint8: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) uint8 pixels to a (B, C, H, W) float batch in [0, 1]."""
    if x_uint8.dim() != 4 or x_uint8.dtype != torch.uint8:
        raise MelaError(
            f"images must be a (B, H, W, C) uint8 tensor, got {x_uint8.dtype} of shape {tuple(x_uint8.shape)}"
        )
    return x_uint8.permute(0, 3, 1, 2).float().div_(255.0)


def standardize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Per-channel ``(x - mean) / std`` of a (B, C, H, W) float batch."""
    channels = x.shape[1]
    if len(mean) != channels or len(std) != channels:
        raise MelaError(
            f"images have {channels} channels but mean has {len(mean)} and std {len(std)} values; give one per channel"
        )
    if any(s <= 0 for s in std):
        raise MelaError(f"std values must be positive, got {list(std)}")
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean_t) / std_t


def normalize(x_uint8: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(B, H, W, C) uint8 to a normalised (B, C, H, W) float batch: ``(pixel / 255 - mean) / std``."""
    return standardize(to_unit_float(x_uint8), mean, std)


PAD_MODES = ("reflect", "replicate", "zeros")


def pad_border(x: torch.Tensor, padding: int, pad_mode: str = "reflect") -> torch.Tensor:
    """Pad each side of a (B, C, H, W) batch by ``padding`` pixels: mirrored, repeated edge, or black.

    ``reflect`` mirrors without repeating the edge pixel (a b c | b a), so it needs
    ``padding`` below the image size; ``replicate`` repeats the edge pixel.
    """
    if pad_mode not in PAD_MODES:
        raise MelaError(f"unknown pad_mode '{pad_mode}'; valid modes: {', '.join(PAD_MODES)}")
    if pad_mode == "zeros":
        return F.pad(x, (padding, padding, padding, padding))
    if pad_mode == "reflect" and padding >= min(x.shape[-2:]):
        raise MelaError(f"reflect padding of {padding} px needs images larger than that, got "
                        f"{x.shape[-2]}x{x.shape[-1]}; lower the padding or use pad_mode=replicate")
    return F.pad(x, (padding, padding, padding, padding), mode=pad_mode)


def random_crop(
    x: torch.Tensor, padding: int, generator: torch.Generator | None = None, pad_mode: str = "reflect"
) -> torch.Tensor:
    """Pad each side by ``padding`` (:func:`pad_border`) and cut one random window of the input's size per image.

    Vectorised by gathering through per-image row and column index grids, so it
    costs one indexing op for the whole batch, whatever the image size.
    """
    _check_batch(x, "random_crop")
    if padding < 0:
        raise MelaError(f"crop padding must be zero or positive, got {padding}")
    if pad_mode not in PAD_MODES:
        raise MelaError(f"unknown pad_mode '{pad_mode}'; valid modes: {', '.join(PAD_MODES)}")
    if padding == 0:
        return x
    batch, _, height, width = x.shape
    padded = pad_border(x, padding, pad_mode)
    span = 2 * padding + 1
    offsets = (_uniform((2, batch), generator, x.device) * span).long().clamp_(max=span - 1)
    rows = offsets[0, :, None] + torch.arange(height, device=x.device)  # (B, H)
    cols = offsets[1, :, None] + torch.arange(width, device=x.device)  # (B, W)
    images = torch.arange(batch, device=x.device)[:, None, None]
    # Advanced indices split by a slice put the broadcast (B, H, W) dims first: result is (B, H, W, C).
    crops = padded[images, :, rows[:, :, None], cols[:, None, :]]
    return crops.permute(0, 3, 1, 2).contiguous()


def _grey(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) luminance of an RGB batch (or the batch itself when it has one channel)."""
    if x.shape[1] != 3:
        return x.mean(dim=1, keepdim=True)
    weights = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)


def color_jitter(x: torch.Tensor, strength: float = 0.4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Scale brightness, contrast and saturation by per-image factors in [1 - s, 1 + s], on [0, 1] images.

    Applied in that fixed order, each clamped back to [0, 1]; saturation only for
    3-channel images (a grey image has none).
    """
    _check_batch(x, "color_jitter")
    if strength < 0:
        raise MelaError(f"jitter strength must be zero or positive, got {strength}")
    if strength == 0:
        return x
    batch = x.shape[0]
    low = max(0.0, 1.0 - strength)
    factors = low + _uniform((3, batch), generator, x.device).to(x.dtype) * (1.0 + strength - low)
    brightness, contrast, saturation = (f.view(batch, 1, 1, 1) for f in factors)
    out = (x * brightness).clamp(0.0, 1.0)
    mean_grey = _grey(out).mean(dim=(1, 2, 3), keepdim=True)
    out = ((out - mean_grey) * contrast + mean_grey).clamp(0.0, 1.0)
    if x.shape[1] == 3:
        grey = _grey(out)
        out = ((out - grey) * saturation + grey).clamp(0.0, 1.0)
    return out


def random_hflip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image left-right with probability 0.5."""
    _check_batch(x, "random_hflip")
    flip = _uniform((x.shape[0],), generator, x.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def rotate90(x: torch.Tensor, k: int) -> torch.Tensor:
    """Rotate every image by ``k`` * 90 degrees (counter-clockwise, as ``numpy.rot90``)."""
    return torch.rot90(x, k, dims=(-2, -1))


def rotation_expand(x: torch.Tensor, labels: torch.Tensor, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Add the 90, 180 and 270 degree rotations of a batch as new classes.

    Rotation ``r`` of an image of class ``c`` gets label ``c + r * n_classes``, so the
    classifier head needs ``4 * n_classes`` outputs. Returns (4B, C, H, W) images in
    blocks [unrotated, 90, 180, 270] and their (4B,) labels.
    """
    _check_batch(x, "rotation_expand")
    if x.shape[-1] != x.shape[-2]:
        raise MelaError(
            f"rotation augmentation needs square images, got {x.shape[-2]}x{x.shape[-1]}; resize them or turn it off"
        )
    if labels.shape != (x.shape[0],):
        raise MelaError(f"{x.shape[0]} images but labels of shape {tuple(labels.shape)}: give one label per image")
    images = torch.cat([rotate90(x, r) for r in range(4)])
    expanded = torch.cat([labels + r * n_classes for r in range(4)])
    return images, expanded


def default_padding(size: int) -> int:
    """Crop padding for ``size``-px images: 8 at 84 px, scaled in proportion, at least 1."""
    return max(1, round(8 * size / 84))


@dataclass(frozen=True)
class AugmentSettings:
    """Which training-time augmentations a step applies (``data_aug`` and, within it, ``aug_crop``,
    ``aug_pad_mode``, ``aug_jitter``, ``hflip``). Jitter is off by default: see ``Augmenter``."""

    enabled: bool = True
    flip: bool = True
    crop: bool = True
    pad_mode: str = "reflect"
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if self.pad_mode not in PAD_MODES:
            raise MelaError(f"unknown aug_pad_mode '{self.pad_mode}'; valid modes: {', '.join(PAD_MODES)}")
        if self.jitter < 0:
            raise MelaError(f"aug_jitter must be zero or positive, got {self.jitter}")

    def build(self, mean: Sequence[float], std: Sequence[float]) -> Augmenter:
        return Augmenter(mean, std, data_aug=self.enabled, jitter=self.jitter, flip=self.flip, crop=self.crop,
                         pad_mode=self.pad_mode)


class Augmenter:
    """The training-time pipeline (crop, jitter, flip, normalise), or normalisation alone.

    Built once from the data set's statistics; call it on each uint8 batch after it
    has been moved to the training device. ``data_aug`` is the master switch; within
    it ``crop``, ``jitter`` (strength, 0 = off) and ``flip`` switch each transform.
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        data_aug: bool,
        padding: int | None = None,
        jitter: float = 0.4,
        flip: bool = True,
        crop: bool = True,
        pad_mode: str = "reflect",
    ) -> None:
        if padding is not None and padding < 0:
            raise MelaError(f"crop padding must be zero or positive, got {padding}")
        if jitter < 0:
            raise MelaError(f"jitter strength must be zero or positive, got {jitter}")
        if pad_mode not in PAD_MODES:
            raise MelaError(f"unknown pad_mode '{pad_mode}'; valid modes: {', '.join(PAD_MODES)}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.data_aug = data_aug
        self.padding = padding
        self.jitter = jitter
        self.flip = flip
        self.crop = crop
        self.pad_mode = pad_mode

    def __call__(self, images_uint8: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, H, W, C) uint8 to a normalised, optionally augmented (B, C, H, W) float batch."""
        x = to_unit_float(images_uint8)
        if self.data_aug:
            if self.crop:
                padding = self.padding if self.padding is not None else default_padding(x.shape[-2])
                x = random_crop(x, padding, generator, self.pad_mode)
            if self.jitter > 0:
                x = color_jitter(x, self.jitter, generator)
            if self.flip:
                x = random_hflip(x, generator)
        return standardize(x, self.mean, self.std)

    def __repr__(self) -> str:
        return (
            f"Augmenter(data_aug={self.data_aug}, crop={self.crop}, padding={self.padding}, pad_mode={self.pad_mode}, "
            f"jitter={self.jitter}, flip={self.flip}, mean={self.mean}, std={self.std})"
        )
