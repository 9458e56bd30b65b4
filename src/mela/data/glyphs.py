"""The built-in ``glyphs`` data set: real font glyphs, Omniglot-style, shipped inside the package.

Why it exists: every other data set needs a download; this one lets tests, demos and
quick experiments run anywhere. 556 character classes of nine scripts (the super-classes),
40 distinct font designs each, 32x32 grayscale, ink bright on black. Class splits are
fixed in the file (see ``docs/glyphs.md``); ``mela data build-glyphs`` rebuilds it.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

import numpy as np

from mela.data.base import SPLITS, DatasetSpec, ImageSplit
from mela.data.registry import register_dataset
from mela.errors import MelaError

ASSET_NAME = "glyphs.npz"
HOW_TO_GET = "it ships with the package; reinstall mela or run `mela data build-glyphs`"

# Pixel mean / std of the train split in [0, 1] units, measured on the shipped file
# (mean of all train pixels / 255, population std); re-measure after a rebuild.
MEAN = (0.2295,)
STD = (0.3792,)


def asset_path() -> Path:
    """Where the shipped ``glyphs.npz`` lives (inside the installed package)."""
    return Path(str(resources.files("mela.data").joinpath("assets", ASSET_NAME)))


@functools.lru_cache(maxsize=1)
def load_arrays() -> dict[str, np.ndarray]:
    """Every array of the shipped file, decompressed once per process (callers must not modify them)."""
    path = asset_path()
    if not path.is_file():
        raise MelaError(f"glyphs data file {path} is missing; {HOW_TO_GET}")
    with np.load(path, allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def load(data_dir: Path, split: str) -> ImageSplit:
    """One split with labels renumbered 0..n-1 in class-id order; ``data_dir`` is ignored (the file ships)."""
    if split not in SPLITS:
        raise MelaError(f"glyphs has no split '{split}'; it has {', '.join(SPLITS)}")
    arrays = load_arrays()
    classes = np.flatnonzero(arrays["class_split"] == SPLITS.index(split))
    keep = np.isin(arrays["labels"], classes)
    renumber = np.full(len(arrays["class_chars"]), -1, dtype=np.int64)
    renumber[classes] = np.arange(len(classes))
    return ImageSplit(
        images=arrays["images"][keep][..., None],
        labels=renumber[arrays["labels"][keep]],
        class_names=tuple(arrays["class_chars"][classes].tolist()),
        superclass=arrays["class_script"][classes].astype(np.int64),
        superclass_names=tuple(arrays["script_names"].tolist()),
    )


def required_files(data_dir: Path, split: str) -> list[Path]:
    """Only the shipped file; nothing is needed in the workspace."""
    return [asset_path()]


SPEC = register_dataset(
    DatasetSpec(
        name="glyphs",
        load=load,
        required_files=required_files,
        mean=MEAN,
        std=STD,
        how_to_get=HOW_TO_GET,
        description="556 font-glyph classes of 9 scripts x 40 designs, 32x32 grayscale; ships with mela",
    )
)
