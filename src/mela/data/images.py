"""Reading the user's image files: one rule for grey vs colour and for resizing, shared by every loader.

``dataset=custom`` (:mod:`mela.data.custom`) and task collections (:mod:`mela.data.tasks`) read user files
the same way: an image's mode is read from its header first (cheap), the collection stays single-channel
only when every image is greyscale (otherwise all become RGB), and images are resized bilinearly without
cropping (a non-square image is stretched).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from mela.errors import MelaError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


def is_image_file(path: Path) -> bool:
    """A visible file whose suffix names an image format PIL reads."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES


def _size_pair(size: int | tuple[int, int]) -> tuple[int, int]:
    """(height, width) from a side or a pair."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def resize_image(array: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """(H, W, C) uint8 -> (h, w, C) with ``size`` = side or (h, w), bilinear; a no-op when already that size."""
    height, width = _size_pair(size)
    if array.shape[:2] == (height, width):
        return array
    if array.shape[2] == 1:
        return np.asarray(Image.fromarray(array[..., 0]).resize((width, height), Image.BILINEAR))[..., None]
    return np.asarray(Image.fromarray(array).resize((width, height), Image.BILINEAR))


# What PIL raises for a file it cannot read: unknown format, truncated data, a bad header, or more pixels
# than its decompression-bomb guard allows (twice Image.MAX_IMAGE_PIXELS, about 179 million).
_UNREADABLE = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def _why(exc: BaseException) -> str:
    if isinstance(exc, Image.DecompressionBombError):
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        return f"too large: more than {limit:,} pixels, PIL's guard against decompression bombs; shrink or remove it"
    return f"{exc}; remove or replace it"


@contextlib.contextmanager
def open_image(path: Path) -> Iterator[Image.Image]:
    """``Image.open(path)`` whose failures, decoding inside the ``with`` included, are one line naming the file.

    An image over twice PIL's pixel limit (its decompression-bomb guard) is refused the same way.
    """
    try:
        with Image.open(path) as image:
            yield image
    except _UNREADABLE as exc:
        raise MelaError(f"cannot read image {path} ({_why(exc)})") from None


def image_header(path: Path) -> tuple[str, tuple[int, int]]:
    """An image's PIL mode and (height, width), read from its header only (no decoding)."""
    with open_image(path) as image:
        return image.mode, (image.height, image.width)


def image_mode(path: Path) -> str:
    """An image's PIL mode, from its header: decides grey vs RGB before anything is decoded."""
    return image_header(path)[0]


def read_image(path: Path, grey: bool, size: int | tuple[int, int] | None = None) -> np.ndarray:
    """Decode ``path`` as (h, w, 1) grey or (h, w, 3) RGB uint8, resized to ``size`` when given."""
    with open_image(path) as image:
        converted = image.convert("L" if grey else "RGB")
        if size is not None:
            height, width = _size_pair(size)
            if (converted.height, converted.width) != (height, width):
                converted = converted.resize((width, height), Image.BILINEAR)
        pixels = np.asarray(converted, dtype=np.uint8)
    return pixels[..., None] if grey else pixels


def as_image_array(image: object, where: str) -> np.ndarray:
    """One in-memory image (array (H, W), (H, W, 1|3) uint8, or a PIL image) as (H, W, C) uint8."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("L" if image.mode in GREY_MODES else "RGB"))
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3) or array.dtype != np.uint8:
        raise MelaError(f"{where}: an image must be (H, W), (H, W, 1) or (H, W, 3) uint8, found {array.dtype} "
                        f"{array.shape}; convert it first")
    return array


def grey_to_rgb(array: np.ndarray) -> np.ndarray:
    """(H, W, 1) -> (H, W, 3) by repeating the channel (what PIL does for ``L`` -> ``RGB``); RGB unchanged."""
    return np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array
