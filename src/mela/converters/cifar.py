"""CIFAR-FS and FC100 from the standard CIFAR-100 python archive.

``cifar-100-python.tar.gz`` (https://www.cs.toronto.edu/~kriz/) holds
``cifar-100-python/{train,test,meta}`` pickles. The 50k train and 10k test images
are pooled (600 per class) and split by class:

- CIFAR-FS (Bertinetto et al., 2019): 64/16/20 fine classes, the lists below.
- FC100 (Oreshkin et al., TADAM, 2018): 12/4/4 super-classes (60/20/20 fine classes).

Written as ``metaL_data/CIFAR-FS/{train,val,test}.pickle`` and ``metaL_data/FC100/...``:
dicts with ``data`` (N,32,32,3) uint8, ``labels`` (CIFAR-100 fine ids), ``coarse_labels``
(CIFAR-100 super-class ids), ``fine_names`` (100) and ``coarse_names`` (20).
"""

from __future__ import annotations

import os
import pickle
import tarfile
from pathlib import Path

import numpy as np

from mela.data.safe_pickle import UnsafePickleError, safe_load
from mela.data.seed_datasets import cifar_split_path
from mela.errors import MelaError

# CIFAR-100's super-classes and their five fine classes (as named in the archive's meta file).
CIFAR100_HIERARCHY = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}

CIFAR_FS_VAL = (
    "beaver", "otter", "flatfish", "shark", "lamp", "television", "beetle", "butterfly",
    "sea", "camel", "cattle", "crab", "crocodile", "maple_tree", "motorcycle", "tractor",
)  # fmt: skip
CIFAR_FS_TEST = (
    "whale", "poppy", "rose", "sweet_pepper", "telephone", "bed", "table", "wardrobe", "leopard", "plain",
    "chimpanzee", "fox", "snail", "worm", "baby", "man", "woman", "bicycle", "pickup_truck", "rocket",
)  # fmt: skip

FC100_SPLITS = {
    "train": (
        "fish", "flowers", "food_containers", "fruit_and_vegetables", "household_electrical_devices",
        "household_furniture", "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "reptiles",
        "trees", "vehicles_1", "vehicles_2",
    ),
    "val": ("large_carnivores", "large_omnivores_and_herbivores", "non-insect_invertebrates", "small_mammals"),
    "test": ("aquatic_mammals", "insects", "medium_mammals", "people"),
}  # fmt: skip


def cifar_fs_splits() -> dict[str, tuple[str, ...]]:
    """Fine class names of each CIFAR-FS split; train is every class not in val or test."""
    held_out = set(CIFAR_FS_VAL) | set(CIFAR_FS_TEST)
    train = tuple(sorted(f for fines in CIFAR100_HIERARCHY.values() for f in fines if f not in held_out))
    return {"train": train, "val": CIFAR_FS_VAL, "test": CIFAR_FS_TEST}


def _get(blob: dict, key: str, member: str):
    for candidate in (key, key.encode()):
        if candidate in blob:
            return blob[candidate]
    raise MelaError(f"{member} in the CIFAR-100 archive has no '{key}'; is this cifar-100-python.tar.gz?")


def _names(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def read_cifar100(archive: str | Path) -> dict:
    """Pooled CIFAR-100: images (60000,32,32,3) uint8, fine / coarse ids, and both name lists."""
    archive = Path(archive)
    if not archive.exists():
        raise MelaError(
            f"{archive} does not exist; download cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/"
        )
    blobs = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for part in ("train", "test", "meta"):
                member = f"cifar-100-python/{part}"
                try:
                    handle = tar.extractfile(member)
                except KeyError as exc:
                    raise MelaError(f"{archive} has no {member}; is this cifar-100-python.tar.gz?") from exc
                if handle is None:
                    raise MelaError(f"{archive}: {member} is not a file")
                blobs[part] = safe_load(handle, encoding="bytes")
    except UnsafePickleError as exc:
        raise MelaError(f"{archive}: {member} {exc}; mela refuses to load it (a pickle can run code): "
                        "download cifar-100-python.tar.gz again from https://www.cs.toronto.edu/~kriz/") from None
    except (tarfile.TarError, EOFError, OSError, pickle.UnpicklingError, ValueError, TypeError, KeyError,
            IndexError) as exc:
        raise MelaError(f"{archive} is unreadable or corrupt ({exc}); download it again") from exc
    images, fine, coarse = [], [], []
    for part in ("train", "test"):
        member = f"cifar-100-python/{part}"
        data = np.asarray(_get(blobs[part], "data", member), dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3072:
            raise MelaError(f"{archive}: {member} data should be (N, 3072), found {data.shape}")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        fine.append(np.asarray(_get(blobs[part], "fine_labels", member), dtype=np.int64))
        coarse.append(np.asarray(_get(blobs[part], "coarse_labels", member), dtype=np.int64))
        if not len(fine[-1]) == len(coarse[-1]) == len(data):
            raise MelaError(f"{archive}: {member} has {len(data)} images but {len(fine[-1])} fine labels")
    meta = "cifar-100-python/meta"
    return {
        "images": np.ascontiguousarray(np.concatenate(images)),
        "fine": np.concatenate(fine),
        "coarse": np.concatenate(coarse),
        "fine_names": _names(_get(blobs["meta"], "fine_label_names", meta)),
        "coarse_names": _names(_get(blobs["meta"], "coarse_label_names", meta)),
    }


def _fine_ids(names: list[str], wanted: tuple[str, ...], archive: Path) -> np.ndarray:
    index = {n: i for i, n in enumerate(names)}
    missing = [n for n in wanted if n not in index]
    if missing:
        raise MelaError(f"{archive}: class '{missing[0]}' is not among CIFAR-100's fine classes")
    return np.array([index[n] for n in wanted], dtype=np.int64)


def _write(path: Path, pooled: dict, mask: np.ndarray) -> None:
    blob = {
        "data": pooled["images"][mask],
        "labels": pooled["fine"][mask],
        "coarse_labels": pooled["coarse"][mask],
        "fine_names": pooled["fine_names"],
        "coarse_names": pooled["coarse_names"],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        pickle.dump(blob, handle, protocol=4)
    os.replace(tmp, path)


def convert_cifar(archive: str | Path, data_dir: str | Path) -> dict[str, dict[str, int]]:
    """Write CIFAR-FS and FC100 split pickles; returns {data set: {split: number of classes}}."""
    archive = Path(archive)
    pooled = read_cifar100(archive)
    coarse_index = {n: i for i, n in enumerate(pooled["coarse_names"])}
    summary: dict[str, dict[str, int]] = {"cifar_fs": {}, "fc100": {}}
    for split, names in cifar_fs_splits().items():
        ids = _fine_ids(pooled["fine_names"], names, archive)
        mask = np.isin(pooled["fine"], ids)
        _write(cifar_split_path(Path(data_dir), "cifar_fs", split), pooled, mask)
        summary["cifar_fs"][split] = len(np.unique(pooled["fine"][mask]))
    for split, supers in FC100_SPLITS.items():
        missing = [s for s in supers if s not in coarse_index]
        if missing:
            raise MelaError(f"{archive}: super-class '{missing[0]}' is not among CIFAR-100's coarse classes")
        mask = np.isin(pooled["coarse"], [coarse_index[s] for s in supers])
        _write(cifar_split_path(Path(data_dir), "fc100", split), pooled, mask)
        summary["fc100"][split] = len(np.unique(pooled["fine"][mask]))
    return summary
