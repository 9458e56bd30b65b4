"""A model trained for one short epoch on the synthetic data set, shared by the inference tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import mela


@pytest.fixture(scope="session")
def trained_model_file(synthetic_dataset, tmp_path_factory) -> Path:
    """model file of a convnet4 meta-trained one epoch on the synthetic 16 px grey data set."""
    folder = tmp_path_factory.mktemp("trained")
    result = mela.meta_train(mela.create_model("convnet4", in_channels=1), mela.open_dataset(synthetic_dataset),
                             n_ways=4, n_shots=2, n_queries=3, epochs=1, train_db_size=20, val_shots=(1, 2),
                             val_tasks=10, data_aug=False, hflip=False, log=None, run_dir=folder)
    return result.checkpoint


def write_png(path: Path, pixels: np.ndarray) -> Path:
    """(H, W, 1|3) uint8 -> a PNG at ``path`` (lossless: read back it gives the same pixels)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(path)
    return path
