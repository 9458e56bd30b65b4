"""The image features the labeler clusters, seen through learn_labeler's ``data_aug`` and ``rotate_aug``.

The original's README gives learn_labeler ``data_aug`` and ``rotate_aug`` "for the labelling step" (to be set as
for the learn_meta_repr model that computes the features; usually false, the default). With both off the labeler
clusters the features of the plain images (:func:`mela.methods.evaluator.extract_features`, unchanged). Otherwise:

- ``data_aug``: each image is seen once, augmented as in training (``aug_crop``, ``aug_pad_mode``, ``aug_jitter``,
  ``hflip``); the draws are seeded: batch ``b`` of the images draws from ``(seed, b)``, whatever the device or the
  number of processes.
- ``rotate_aug``: an image's feature is the mean of its features at 0, 90, 180 and 270 degrees (of its augmented
  view, with ``data_aug``).

A task class's key is then the mean of these features over its images, as always.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from mela.data.augment import AugmentSettings, rotate90
from mela.data.base import ImageSplit
from mela.data.tasks import TaskCollection
from mela.device import pixel_tensor
from mela.errors import MelaError
from mela.methods.collection_labels import collection_image_features
from mela.methods.evaluator import Extract, extract_features, map_batches
from mela.methods.global_labels import pile_features


@dataclass(frozen=True)
class LabellingViews:
    """How the labelling features see the images: ``augment`` (``enabled`` is learn_labeler's ``data_aug``),
    ``rotations`` (``rotate_aug``: the mean over four rotations) and the ``seed`` of the augmentation's draws."""

    augment: AugmentSettings = field(default_factory=lambda: AugmentSettings(enabled=False))
    rotations: bool = False
    seed: int = 0

    @property
    def plain(self) -> bool:
        """Neither augmentation nor rotations: the plain images' features."""
        return not self.augment.enabled and not self.rotations


@torch.no_grad()
def view_features(model: torch.nn.Module, images: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...],
                  device: torch.device, views: LabellingViews, batch_size: int = 256) -> torch.Tensor:
    """(N, d) float32 features on the CPU of ``images`` (N, H, W, C uint8) seen through ``views``, in eval mode."""
    if views.rotations and images.shape[1] != images.shape[2]:
        raise MelaError(f"rotate_aug needs square images, got {images.shape[1]}x{images.shape[2]}; resize them "
                        "(image_size=...) or set rotate_aug=false")
    augmenter = views.augment.build(mean, std)
    turns = range(4) if views.rotations else range(1)

    def batch_features(start: int, batch: np.ndarray) -> torch.Tensor:
        generator = torch.Generator().manual_seed(int(np.random.SeedSequence([views.seed, start]).generate_state(1)[0]))
        x = augmenter(pixel_tensor(batch).to(device), generator)
        return torch.stack([model(rotate90(x, k)).float() for k in turns]).mean(0)

    was_training = model.training
    model.eval()
    out = map_batches(images, batch_size, batch_features)  # as extract_features: each rank its batches, in order
    model.train(was_training)
    return out


def extractor(views: LabellingViews) -> Extract:
    """What computes the labelling features: the plain images' (``extract_features``), or ``views``'."""
    if views.plain:
        return extract_features
    return lambda model, images, mean, std, device: view_features(model, images, mean, std, device, views)


def pile_view_features(model: torch.nn.Module, split: ImageSplit, tasks: np.ndarray, mean: tuple[float, ...],
                       std: tuple[float, ...], device: torch.device, views: LabellingViews) -> np.ndarray:
    """(T, n_ways, per_class, d): :func:`mela.methods.global_labels.pile_features` through ``views``."""
    return pile_features(model, split, tasks, mean, std, device, extractor(views))


def collection_view_features(model: torch.nn.Module, collection: TaskCollection, mean: tuple[float, ...],
                             std: tuple[float, ...], device: torch.device, views: LabellingViews) -> np.ndarray:
    """(N, d): :func:`mela.methods.collection_labels.collection_image_features` through ``views``."""
    return collection_image_features(model, collection, mean, std, device, extractor(views))
