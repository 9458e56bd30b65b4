"""Shared fixtures: a tiny synthetic data set registered under a test-only name, and a temp workspace."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from mela.data.base import DatasetSpec, ImageSplit
from mela.data.registry import _DATASETS, register_dataset
from mela.methods.labeler import RaggedFeatures

SYNTHETIC = "synthetic_test"

# precision=auto picks bf16 on a CPU with native bfloat16 (mela.engine.precision): the suite keeps fp32 on every
# CPU, its own processes and the ones it starts alike, so its numbers do not depend on the machine's processor.
# tests/engine/test_precision.py tests both branches by mocking the capability.
os.environ["MELA_CPU_BF16"] = "0"


def recurring_tasks(rng: np.random.Generator, n_classes: int, recurrence: int, ways: int = 5) -> np.ndarray:
    """(T, ways) true classes of a pile: ``recurrence`` rounds, each a shuffle of the classes cut into tasks of
    distinct classes (so each class recurs ``recurrence`` times when ``ways`` divides ``n_classes``)."""
    tasks = []
    for _ in range(recurrence):
        order = rng.permutation(n_classes)
        tasks += [order[i : i + ways] for i in range(0, n_classes - ways + 1, ways)]
    return np.array(tasks)


def make_synthetic_split(n_classes: int, per_class: int, seed: int, size: int = 16) -> ImageSplit:
    """Classes are random binary 4x4 patterns blown up to ``size`` px, jittered and noisy."""
    rng = np.random.default_rng(seed)
    cell = size // 4
    images, labels = [], []
    for label in range(n_classes):
        pattern = np.kron((rng.random((4, 4)) > 0.5).astype(float), np.ones((cell, cell)))
        for _ in range(per_class):
            shifted = np.roll(pattern, tuple(rng.integers(-1, 2, 2)), (0, 1))
            image = np.clip(shifted * 200 + rng.normal(0, 30, (size, size)), 0, 255).astype(np.uint8)
            images.append(image[..., None])
            labels.append(label)
    return ImageSplit(np.stack(images), np.array(labels, dtype=np.int64))


def ragged_pile(seed: int) -> tuple[RaggedFeatures, np.ndarray]:
    """Tasks of 2-6 ways, classes of 1-4 items, 15 well separated classes; flat true classes."""
    rng = np.random.default_rng(seed)
    means = 6.0 * rng.normal(size=(15, 8)) / math.sqrt(8)
    ways = rng.integers(2, 7, 80)
    true = np.concatenate([rng.choice(15, w, replace=False) for w in ways])
    sizes = rng.integers(1, 5, len(true))
    items = means[np.repeat(true, sizes)] + rng.normal(size=(sizes.sum(), 8)) / math.sqrt(8)
    return RaggedFeatures(items, np.r_[0, np.cumsum(sizes)], np.r_[0, np.cumsum(ways)]), true


@pytest.fixture(scope="session")
def synthetic_dataset() -> str:
    """Register (once) a 24/8/8-class, 20-image-per-class, 16x16 grayscale data set; return its name."""
    if SYNTHETIC not in _DATASETS:
        splits = {"train": make_synthetic_split(24, 20, 1), "val": make_synthetic_split(8, 20, 2),
                  "test": make_synthetic_split(8, 20, 3)}
        register_dataset(DatasetSpec(SYNTHETIC, lambda _d, split: splits[split], lambda _d, _s: [], (0.35,), (0.4,),
                                     "it is built by the tests", "tiny synthetic patterns for tests"))
    return SYNTHETIC


@pytest.fixture()
def workspace(tmp_path, monkeypatch):
    """A fresh $WORKSPACE for one test."""
    root = tmp_path / "ws"
    monkeypatch.setenv("WORKSPACE", str(root))
    return root
