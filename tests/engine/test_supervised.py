"""Supervised pre-training stops with one line, before the optimizer step, when its loss is not finite."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mela.data.augment import Augmenter
from mela.engine.supervised import supervised_epoch
from mela.errors import MelaError
from mela.models.feature_model import Classifier, FeatureModel, ModelSpec


def _epoch_fn(learning_rate: float, poison: bool = False):
    rng = np.random.default_rng(0)  # 4 classes of 6 random 16x16 grey images
    images = torch.from_numpy(rng.integers(0, 256, (24, 16, 16, 1), dtype=np.uint8))
    labels = np.repeat(np.arange(4), 6)
    torch.manual_seed(0)
    classifier = Classifier(FeatureModel(ModelSpec("convnet4", {"in_channels": 1, "hidden": 8})), [4])
    if poison:
        with torch.no_grad():
            classifier.heads[0].weight[0, 0] = float("inf")
    optimizer = torch.optim.SGD(classifier.parameters(), lr=learning_rate, momentum=0.9)
    run = supervised_epoch(classifier, optimizer, images, np.arange(24), [labels], [4],
                           Augmenter((0.35,), (0.4,), data_aug=False), 8, torch.device("cpu"), seed=0)
    return classifier, run


def test_a_moderate_learning_rate_gives_a_finite_loss_and_an_accuracy() -> None:
    _, run = _epoch_fn(0.01)
    metrics = run(0)
    assert np.isfinite(metrics["loss"]) and 0.0 <= metrics["train_acc"] <= 100.0


def test_a_huge_learning_rate_stops_with_one_line_naming_the_epoch_the_batch_and_the_advice() -> None:
    _, run = _epoch_fn(1e10)
    with pytest.raises(MelaError, match=r"^training diverged at epoch 3: the loss is (nan|inf) at batch [23]; "
                                        r"lower learning_rate \(now 1e\+10\)$"):
        run(2)


def test_a_non_finite_loss_leaves_the_weights_as_they_were() -> None:
    classifier, run = _epoch_fn(0.01, poison=True)
    before = {k: v.detach().clone() for k, v in classifier.named_parameters()}
    with pytest.raises(MelaError, match=r"^training diverged at epoch 1: the loss is (nan|inf) at batch 1;"):
        run(0)
    for key, value in classifier.named_parameters():
        assert torch.equal(value.detach(), before[key]), key
