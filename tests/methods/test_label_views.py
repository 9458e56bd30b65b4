"""learn_labeler's data_aug and rotate_aug: the labelling features through augmented views (methods/label_views.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mela.config import compose_config
from mela.data.augment import AugmentSettings
from mela.data.samplers import TaskShape, labeling_pile
from mela.errors import MelaError
from mela.methods.evaluator import extract_features
from mela.methods.global_labels import pile_features
from mela.methods.label_views import LabellingViews, pile_view_features, view_features
from mela.models.feature_model import build_model
from mela.steps import learn_labeler
from tests.conftest import make_synthetic_split

CPU = torch.device("cpu")
MEAN, STD = (0.35,), (0.4,)


@pytest.fixture(scope="module")
def split():
    return make_synthetic_split(6, 6, 0)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("convnet4", in_channels=1)


def test_the_default_views_are_the_plain_features_bit_for_bit(split, model):
    tasks = labeling_pile(split, TaskShape(3, 2, 1), True, 10, 0)
    assert LabellingViews().plain
    np.testing.assert_array_equal(pile_view_features(model, split, tasks, MEAN, STD, CPU, LabellingViews()),
                                  pile_features(model, split, tasks, MEAN, STD, CPU))


def test_rotate_aug_averages_the_features_of_the_four_rotations_of_each_image(split, model):
    images = split.images[:10]
    expected = np.mean([extract_features(model, np.ascontiguousarray(np.rot90(images, k, axes=(1, 2))), MEAN, STD,
                                         CPU).numpy() for k in range(4)], axis=0)
    got = view_features(model, images, MEAN, STD, CPU, LabellingViews(rotations=True), batch_size=4).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_data_aug_views_are_seeded_by_batch_and_with_every_transform_off_they_are_the_plain_images(split, model):
    images = split.images[:12]
    views = LabellingViews(AugmentSettings(enabled=True, jitter=0.4), seed=3)
    first = view_features(model, images, MEAN, STD, CPU, views, batch_size=5)
    assert torch.equal(first, view_features(model, images, MEAN, STD, CPU, views, batch_size=5))
    other_seed = LabellingViews(AugmentSettings(enabled=True, jitter=0.4), seed=4)
    assert not torch.allclose(first, view_features(model, images, MEAN, STD, CPU, other_seed, batch_size=5))
    nothing = LabellingViews(AugmentSettings(enabled=True, flip=False, crop=False, jitter=0.0))
    torch.testing.assert_close(view_features(model, images, MEAN, STD, CPU, nothing),
                               extract_features(model, images, MEAN, STD, CPU))


def test_rotations_of_images_that_are_not_square_are_refused_in_one_line(model):
    with pytest.raises(MelaError, match="rotate_aug needs square images, got 8x6"):
        view_features(model, np.zeros((2, 8, 6, 1), np.uint8), MEAN, STD, CPU, LabellingViews(rotations=True))


def test_learn_labeler_reads_data_aug_and_rotate_aug_for_its_labelling_features():
    default = learn_labeler.read_settings(compose_config("learn_labeler")).views
    assert default.plain
    cfg = compose_config("learn_labeler", ["data_aug=true", "rotate_aug=true", "aug_jitter=0.2", "hflip=false",
                                           "seed=7"])
    views = learn_labeler.read_settings(cfg).views
    assert views == LabellingViews(AugmentSettings(enabled=True, flip=False, jitter=0.2), rotations=True, seed=7)
