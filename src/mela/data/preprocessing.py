"""What a model expects of its input images, recorded in every model file so raw images are prepared as in training.

A model is trained on (H, W, C) uint8 pixels scaled to [0, 1] and standardised per channel with its data
set's mean and std. :class:`Preprocessing` records that (size, channels, mean, std) and turns any image a
user has (a file, a PIL image, a uint8 array; grey or colour; any size) into exactly the pixels the training
loader would have produced: the same PIL conversions and bilinear resizing as :mod:`mela.data.images`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mela.data.augment import normalize
from mela.data.images import GREY_MODES, as_image_array, open_image, read_image, resize_image
from mela.errors import MelaError

ImageLike = object  # a path (str / Path), a PIL image, or an (H, W) / (H, W, 1|3) uint8 array
Note = Callable[[str], None]


@dataclass(frozen=True)
class Preprocessing:
    """The input a model was trained on: ``image_size`` (height, width), ``channels`` (1 or 3), per-channel
    ``mean`` / ``std`` in [0, 1] pixel units."""

    image_size: tuple[int, int]
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise MelaError(f"a model's input has 1 or 3 channels, this one records {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise MelaError(f"the recorded normalisation has {len(self.mean)} means and {len(self.std)} stds for "
                            f"{self.channels} channels; the model file is damaged")
        if any(s <= 0 for s in self.std):
            raise MelaError(f"the recorded std {self.std} has a value <= 0; the model file is damaged")

    @classmethod
    def of_training(cls, image_shape: Sequence[int], mean: Sequence[float], std: Sequence[float]) -> Preprocessing:
        """The preprocessing of a model trained on images of ``image_shape`` (H, W, C) normalised by mean / std."""
        height, width, channels = (int(v) for v in image_shape)
        return cls((height, width), channels, _per_channel(mean, channels), _per_channel(std, channels))

    def to_dict(self) -> dict:
        return {"image_size": list(self.image_size), "channels": self.channels, "mean": list(self.mean),
                "std": list(self.std), "pixel_scale": "pixel / 255, then (x - mean) / std per channel",
                "layout": "NCHW float32"}

    @classmethod
    def from_dict(cls, data: object, where: str) -> Preprocessing:
        try:
            size = data["image_size"]  # type: ignore[index]
            return cls((int(size[0]), int(size[1])), int(data["channels"]),  # type: ignore[index]
                       tuple(float(v) for v in data["mean"]), tuple(float(v) for v in data["std"]))  # type: ignore[index]
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise MelaError(f"{where}: its preprocessing record {data!r} is unusable ({type(exc).__name__}); "
                            "the file is damaged") from None
        except MelaError as exc:
            raise MelaError(f"{where}: {exc}") from None

    @property
    def grey(self) -> bool:
        return self.channels == 1

    def pixels(self, images: Sequence[ImageLike] | np.ndarray, note: Note | None = None) -> np.ndarray:
        """(N, H, W, C) uint8 at the model's size and channels; ``note`` hears once of each conversion made."""
        if isinstance(images, np.ndarray) and images.ndim == 4:
            images = list(images)
        tell = OnceNote(note)
        out = np.empty((len(images), *self.image_size, self.channels), dtype=np.uint8)
        for i, image in enumerate(images):
            out[i] = self.pixel(image, i, tell)
        return out

    def pixel(self, image: ImageLike, index: int = 0, tell: OnceNote | None = None) -> np.ndarray:
        """One image as (H, W, C) uint8 at the model's size and channels (``index`` names it in errors)."""
        tell = tell or OnceNote(None)
        if isinstance(image, (str, Path)):
            path = Path(image)
            mode, size = image_facts(path)
            self._tell_conversion(mode in GREY_MODES, size, tell)
            return read_image(path, self.grey, self.image_size)
        if isinstance(image, Image.Image):
            self._tell_conversion(image.mode in GREY_MODES, (image.height, image.width), tell)
            array = np.asarray(image.convert("L" if self.grey else "RGB"))
            return resize_image(array[..., None] if self.grey else array, self.image_size)
        array = as_image_array(image, f"image {index}")
        self._tell_conversion(array.shape[2] == 1, array.shape[:2], tell)
        if array.shape[2] != self.channels:  # the same conversion PIL applies to files
            array = np.asarray(Image.fromarray(array[..., 0] if array.shape[2] == 1 else array)
                               .convert("L" if self.grey else "RGB"))
            array = array[..., None] if self.grey else array
        return resize_image(array, self.image_size)

    def _tell_conversion(self, grey: bool, size: tuple[int, int], tell: OnceNote) -> None:
        if grey and not self.grey:
            tell("rgb", "note: grey images are repeated to RGB for this 3-channel model")
        elif not grey and self.grey:
            tell("grey", "note: colour images are converted to grey (PIL's L) for this 1-channel model")
        if tuple(size) != tuple(self.image_size):
            tell("size", f"note: images are resized to {self.image_size[0]}x{self.image_size[1]} (bilinear), "
                         "the size this model was trained on")

    def tensor(self, pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(N, H, W, C) uint8 -> the normalised (N, C, H, W) float batch the model takes."""
        batch = pixels if isinstance(pixels, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(pixels))
        return normalize(batch, self.mean, self.std)


class OnceNote:
    """Pass each kind of message to ``note`` once (a thousand RGB files make one note, not a thousand)."""

    def __init__(self, note: Note | None) -> None:
        self.note, self.said = note, set()

    def __call__(self, kind: str, message: str) -> None:
        if self.note is not None and kind not in self.said:
            self.said.add(kind)
            self.note(message)


def _per_channel(values: Sequence[float], channels: int) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    return values * channels if len(values) == 1 and channels > 1 else values


def image_facts(path: Path) -> tuple[str, tuple[int, int]]:
    """An image file's mode and (height, width), from its header; unreadable files are one line naming them."""
    with open_image(path) as image:
        return image.mode, (image.height, image.width)
