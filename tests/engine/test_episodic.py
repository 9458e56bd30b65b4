"""Episodic ridge training stops with one line when it diverges (failed solve or non-finite loss)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from mela.data.augment import Augmenter
from mela.data.base import ImageSplit
from mela.data.samplers import TaskShape, TaskSource
from mela.engine.episodic import RidgeLossSettings, episodic_epoch
from mela.errors import MelaError
from mela.models.feature_model import FeatureModel, ModelSpec

SHAPE = TaskShape(3, 1, 2)


def _epoch_fn(learning_rate: float, model: FeatureModel | None = None):
    rng = np.random.default_rng(0)  # 6 classes of 8 random 16x16 grey images
    split = ImageSplit(rng.integers(0, 256, (48, 16, 16, 1), dtype=np.uint8), np.repeat(np.arange(6), 8))
    torch.manual_seed(0)
    model = model or FeatureModel(ModelSpec("convnet4", {"in_channels": 1, "hidden": 8}))
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=0.9)
    source = TaskSource(split, SHAPE, no_replacement=False, fixed_db=False, train_db_size=8, seed=0)
    run = episodic_epoch(model, optimizer, source, SHAPE, torch.from_numpy(split.images), split.item_images(),
                         Augmenter((0.35,), (0.4,), data_aug=False), RidgeLossSettings(), torch.device("cpu"), seed=0)
    return model, run


def test_a_moderate_learning_rate_trains_with_finite_losses() -> None:
    _, run = _epoch_fn(0.01)
    metrics = run(0)
    assert set(metrics) == {"mse", "hinge", "weight_mse", "loss"}
    assert metrics["loss"] == pytest.approx(metrics["mse"] + metrics["hinge"] + metrics["weight_mse"])


def test_a_huge_learning_rate_stops_with_one_line_naming_the_epoch_and_the_advice() -> None:
    _, run = _epoch_fn(1e10)
    with pytest.raises(MelaError) as caught:
        run(0)
    message = str(caught.value)
    assert re.fullmatch(r"training diverged at epoch 1: (the ridge solve failed \(.*singular\)|the loss is (nan|inf))"
                        r" at step \d+; lower learning_rate \(now 1e\+10\)", message), message


def test_a_failed_ridge_solve_names_the_epoch_it_happened_in(monkeypatch) -> None:
    # Seed 0 at lr=1e10 fails in the solve (torch._C._LinAlgError), which used to be a traceback.
    _, run = _epoch_fn(1e10)
    with pytest.raises(MelaError, match=r"^training diverged at epoch 4: the ridge solve failed \(") as caught:
        run(3)
    assert isinstance(caught.value.__cause__.__cause__, torch.linalg.LinAlgError)


def test_a_non_finite_loss_is_caught_before_the_optimizer_step_touches_the_weights() -> None:
    model = FeatureModel(ModelSpec("convnet4", {"in_channels": 1, "hidden": 8}))
    with torch.no_grad():
        next(model.parameters())[0, 0, 0, 0] = float("nan")  # NaN features: the solve returns NaN silently
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    _, run = _epoch_fn(0.01, model)
    with pytest.raises(MelaError, match=r"^training diverged at epoch 2: the loss is nan at step 1; lower "
                                        r"learning_rate \(now 0.01\)$"):
        run(1)
    for key, value in model.named_parameters():  # (batch-norm running statistics do move in the forward pass)
        assert torch.equal(value.detach().nan_to_num(), before[key].nan_to_num()), key
