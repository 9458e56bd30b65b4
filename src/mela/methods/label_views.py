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

from mela import distributed
from mela.data.augment import AugmentSettings, rotate90
from mela.data.base import ImageSplit
from mela.data.tasks import TaskCollection
from mela.device import pixel_tensor
from mela.errors import MelaError
from mela.methods.collection_labels import collection_image_features
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
    was_training = model.training
    model.eval()
    augmenter = views.augment.build(mean, std)
    starts = list(range(0, len(images), batch_size))
    out = []
    for start in distributed.shard(starts):  # as extract_features: each rank its batches, gathered in order
        generator = torch.Generator().manual_seed(int(np.random.SeedSequence([views.seed, start]).generate_state(1)[0]))
        x = augmenter(pixel_tensor(images[start:start + batch_size]).to(device), generator)
        turns = range(4) if views.rotations else range(1)
        out.append(torch.stack([model(rotate90(x, k)).float() for k in turns]).mean(0).cpu())
    model.train(was_training)
    if distributed.is_distributed():
        out = distributed.unshard(distributed.all_gather_object(out), len(starts))
    return torch.cat(out) if out else torch.zeros(0)


def pile_view_features(model: torch.nn.Module, split: ImageSplit, tasks: np.ndarray, mean: tuple[float, ...],
                       std: tuple[float, ...], device: torch.device, views: LabellingViews) -> np.ndarray:
    """(T, n_ways, per_class, d): :func:`mela.methods.global_labels.pile_features` through ``views``."""
    if views.plain:
        return pile_features(model, split, tasks, mean, std, device)
    rows = split.item_images()[tasks]
    used, inverse = np.unique(rows, return_inverse=True)
    features = view_features(model, split.images[used], mean, std, device, views).numpy()
    return features[inverse.reshape(rows.shape)]


def collection_view_features(model: torch.nn.Module, collection: TaskCollection, mean: tuple[float, ...],
                             std: tuple[float, ...], device: torch.device, views: LabellingViews) -> np.ndarray:
    """(N, d): :func:`mela.methods.collection_labels.collection_image_features` through ``views``."""
    if views.plain:
        return collection_image_features(model, collection, mean, std, device)
    used = np.unique(collection.item_image)
    computed = view_features(model, collection.images[used], mean, std, device, views).numpy()
    features = np.zeros((len(collection.images), computed.shape[1]), dtype=computed.dtype)
    features[used] = computed
    return features
