"""Build ImageNet-derived few-shot data sets (mini-60, tiered-780 and the like) from an ILSVRC train folder.

Same idea as the reference's ximagenet-tools: pick ``n_classes`` classes (wnid
folders of JPEGs) and ``images_per_class`` images of each, split the classes
64/16/20 % into train/val/test, honour classes forced into a split, and keep an
exclusion list out of *train*: that is how the reference made mini-60's training
classes disjoint from miniImageNet's test classes. Output, under
``metaL_data/<name>/``: ``{train,valid,test}_images.npy`` (N,84,84,3) uint8,
``{train,valid,test}_labels.npy`` (N,) int64 (0..n-1 within the split) and
``classes.json`` ({"train": [wnid of label 0, ...], "valid": [...], "test": [...]},
plus the seed and the exclusion list) — the layout the mini60 / tiered780 loaders read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from mela.data.seed_datasets import XIMAGENET_SPLIT_FILES, read_pickle
from mela.errors import MelaError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
SPLIT_FRACTIONS = (0.64, 0.16, 0.20)


def read_class_ids(path: str | Path) -> list[str]:
    """Class ids (wnids) listed by ``path``, so the test classes of an existing data set can be excluded.

    Understands a miniImageNet pickle (its ``catname2label`` keys), a tieredImageNet
    labels pickle (``label_specific_str``), a ``classes.json`` of this tool (its
    ``test`` list) or a plain JSON list, and otherwise a text file of wnids separated
    by whitespace (``#`` starts a comment).
    """
    path = Path(path)
    if not path.exists():
        raise MelaError(f"class list {path} does not exist")
    if path.suffix in (".pickle", ".pkl"):
        blob = read_pickle(path)
        if isinstance(blob, dict) and isinstance(blob.get("catname2label"), dict):
            return sorted(str(k) for k in blob["catname2label"])
        if isinstance(blob, dict) and blob.get("label_specific_str") is not None:
            return [v.decode() if isinstance(v, bytes) else str(v) for v in blob["label_specific_str"]]
        raise MelaError(f"{path} has no class ids (no catname2label / label_specific_str); pass a text file of wnids")
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except ValueError as exc:
            raise MelaError(f"{path} is not valid JSON ({exc})") from exc
        if isinstance(data, dict) and isinstance(data.get("test"), list):
            return [str(v) for v in data["test"]]
        if isinstance(data, list):
            return [str(v) for v in data]
        raise MelaError(f"{path} should hold a list of class ids or a dict with a 'test' list")
    ids = []
    for line in path.read_text().splitlines():
        ids.extend(line.split("#", 1)[0].split())
    return ids


@dataclass(frozen=True)
class XImageNetPlan:
    """Which classes go to which split, and which images of each class are used."""

    splits: dict[str, list[str]]
    images: dict[str, list[Path]]


def _class_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def split_sizes(n_classes: int) -> tuple[int, int, int]:
    """64/16/20 % of the classes, rounded, test taking the remainder."""
    n_train = round(SPLIT_FRACTIONS[0] * n_classes)
    n_val = round(SPLIT_FRACTIONS[1] * n_classes)
    return n_train, n_val, n_classes - n_train - n_val


def plan_ximagenet(
    train_dir: str | Path,
    n_classes: int,
    images_per_class: int,
    seed: int = 0,
    force_train: Iterable[str] = (),
    force_val: Iterable[str] = (),
    force_test: Iterable[str] = (),
    exclude_from_train: Iterable[str] = (),
) -> XImageNetPlan:
    """Choose classes, their split and their images, reproducibly from ``seed``.

    Guarantees: forced classes land in their split; no class of
    ``exclude_from_train`` lands in train (excluded classes may still be drawn for
    val/test); every chosen class has ``images_per_class`` distinct images.
    """
    train_dir = Path(train_dir)
    if not train_dir.is_dir():
        raise MelaError(f"ILSVRC train folder {train_dir} does not exist; pass the folder of wnid sub-folders")
    folders = {p.name: p for p in sorted(train_dir.iterdir()) if p.is_dir()}
    forced = {
        "train": list(dict.fromkeys(force_train)),
        "val": list(dict.fromkeys(force_val)),
        "test": list(dict.fromkeys(force_test)),
    }
    excluded = set(exclude_from_train)
    clash = sorted(set(forced["train"]) & excluded)
    if clash:
        raise MelaError(f"class {clash[0]} is both forced into train and excluded from train; fix the two class lists")
    seen: dict[str, str] = {}
    for split, ids in forced.items():
        for wnid in ids:
            if wnid in seen:
                raise MelaError(f"class {wnid} is forced into both {seen[wnid]} and {split}")
            if wnid not in folders:
                raise MelaError(f"forced class {wnid} has no folder in {train_dir}")
            seen[wnid] = split
    sizes = dict(zip(("train", "val", "test"), split_sizes(n_classes), strict=True))
    if min(sizes.values()) < 1:
        raise MelaError(f"{n_classes} classes are too few for a 64/16/20 % split; ask for at least 5")
    for split, ids in forced.items():
        if len(ids) > sizes[split]:
            raise MelaError(f"{len(ids)} classes forced into {split} but it only has {sizes[split]} places")
    images = {name: _class_images(folder) for name, folder in folders.items()}
    short = [w for w in seen if len(images[w]) < images_per_class]
    if short:
        raise MelaError(f"forced class {short[0]} has {len(images[short[0]])} images, fewer than {images_per_class}")
    rng = np.random.default_rng(seed)
    pool = [w for w in folders if w not in seen and len(images[w]) >= images_per_class]
    pool = [pool[i] for i in rng.permutation(len(pool))]
    free_train = sizes["train"] - len(forced["train"])
    train_fill = [w for w in pool if w not in excluded][:free_train]
    if len(train_fill) < free_train:
        raise MelaError(
            f"only {len(forced['train']) + len(train_fill)} classes with >= {images_per_class} images may go to train, "
            f"{sizes['train']} needed; ask for fewer classes or images per class"
        )
    taken = set(train_fill)
    free_val = sizes["val"] - len(forced["val"])
    free_test = sizes["test"] - len(forced["test"])
    rest = [w for w in pool if w not in taken][: free_val + free_test]
    if len(rest) < free_val + free_test:
        raise MelaError(
            f"{train_dir} has {len(seen) + len(pool)} classes with >= {images_per_class} images, {n_classes} needed"
        )
    splits = {
        "train": sorted(forced["train"] + train_fill),
        "val": sorted(forced["val"] + rest[:free_val]),
        "test": sorted(forced["test"] + rest[free_val:]),
    }
    chosen = {}
    for wnid in (w for ids in splits.values() for w in ids):
        picks = np.sort(rng.choice(len(images[wnid]), size=images_per_class, replace=False))
        chosen[wnid] = [images[wnid][i] for i in picks]
    return XImageNetPlan(splits=splits, images=chosen)


def load_resized(path: Path, size: int) -> np.ndarray:
    """One image as (size, size, 3) uint8 RGB, bilinear resize."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise MelaError(f"cannot read image {path} ({exc}); remove it from the class folder") from exc


def build_ximagenet(
    train_dir: str | Path,
    data_dir: str | Path,
    name: str,
    n_classes: int,
    images_per_class: int,
    seed: int = 0,
    force_train: Sequence[str] = (),
    force_val: Sequence[str] = (),
    force_test: Sequence[str] = (),
    exclude_from_train: Sequence[str] = (),
    image_size: int = 84,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Plan, then write ``metaL_data/<name>/`` in the x60ImageNet .npy layout; returns that folder."""
    from tqdm import tqdm

    out = Path(data_dir) / name
    if out.exists() and any(out.iterdir()) and not force:
        raise MelaError(f"{out} already exists; delete it or pass --force to overwrite it")
    plan = plan_ximagenet(
        train_dir, n_classes, images_per_class, seed, force_train, force_val, force_test, exclude_from_train
    )
    out.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=n_classes * images_per_class, desc=f"building {name}", unit="img", disable=not progress)
    for split, wnids in plan.splits.items():
        stem = XIMAGENET_SPLIT_FILES[split]
        n = len(wnids) * images_per_class
        tmp_images = out / f"{stem}_images.tmp.npy"
        pixels = np.lib.format.open_memmap(tmp_images, mode="w+", dtype=np.uint8, shape=(n, image_size, image_size, 3))
        labels = np.repeat(np.arange(len(wnids), dtype=np.int64), images_per_class)
        row = 0
        for wnid in wnids:
            for path in plan.images[wnid]:
                pixels[row] = load_resized(path, image_size)
                row += 1
                bar.update()
        pixels.flush()
        del pixels
        os.replace(tmp_images, out / f"{stem}_images.npy")
        tmp_labels = out / f"{stem}_labels.tmp.npy"
        np.save(tmp_labels, labels)
        os.replace(tmp_labels, out / f"{stem}_labels.npy")
    bar.close()
    classes = {XIMAGENET_SPLIT_FILES[s]: w for s, w in plan.splits.items()}
    classes.update(seed=seed, images_per_class=images_per_class, excluded_from_train=sorted(set(exclude_from_train)))
    tmp = out / "classes.json.tmp"
    tmp.write_text(json.dumps(classes, indent=1))
    os.replace(tmp, out / "classes.json")
    return out
