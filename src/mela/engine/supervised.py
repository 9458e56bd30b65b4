"""Supervised pre-training on a flat labelled data set (learn_labeler's second half, sup_baseline)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mela import distributed
from mela.data.augment import Augmenter, AugmentSettings, rotation_expand
from mela.data.base import ImageSplit
from mela.device import place_images
from mela.engine.checkpoint import with_preprocessing
from mela.engine.episodic import descend, rank_generators, share_weight, with_coverage
from mela.engine.precision import FP32, Compute, ComputeSettings
from mela.engine.trainer import OptimSettings, ReportSettings, Trainer, TrainOutcome, ValidationSettings, make_validator
from mela.errors import MelaError
from mela.models.feature_model import Classifier, FeatureModel
from mela.reporting.progress import progress_bar


def head_sizes(n_classes: list[int], rotate_aug: bool) -> list[int]:
    """Outputs per head: rotation augmentation gives every class four rotated copies (label + r * n)."""
    return [n * 4 if rotate_aug else n for n in n_classes]


def supervised_epoch(
    classifier: Classifier,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    item_images: np.ndarray,
    label_sets: list[np.ndarray],
    n_classes: list[int],
    augmenter: Augmenter,
    batch_size: int,
    device: torch.device,
    seed: int,
    rotate_aug: bool = False,
    progress: bool = False,
    compute: Compute = FP32,
) -> Callable[[int], dict[str, float]]:
    """Build the function that trains one epoch of cross-entropy over the items.

    ``label_sets`` holds one label array per head (one head unless multi-head,
    h_aircraft's three granularities); the loss is the mean over heads. ``compute`` runs the network
    pass (autocast, memory layout); the logits leave it as float32, so the cross-entropy is float32.
    """
    labels = [torch.from_numpy(np.asarray(ls, dtype=np.int64)) for ls in label_sets]

    def run(epoch: int) -> dict[str, float]:
        # Every rank draws the order as rank 0 (a single process) does; the augmentation draws are the rank's own.
        generator, device_generator = rank_generators(seed, epoch, device)
        shared = generator if distributed.rank() == 0 else torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(len(item_images), generator=shared)
        totals = {"loss": 0.0, "correct": 0.0, "seen": 0.0, "images": 0.0}
        batches = range(0, len(order), batch_size)
        with distributed.uneven_steps(classifier):
            for start in progress_bar(batches, progress and distributed.is_main(), f"epoch {epoch + 1}",
                                      len(batches), unit="batch"):
                step = order[start:start + batch_size]
                idx = distributed.shard(step)  # this rank's share of the batch's images
                if len(idx):
                    _step(idx, len(step), start, epoch, device_generator, totals)
        totals = distributed.sum_over_ranks(totals)
        seen = max(totals["seen"], 1)
        out = {"loss": totals["loss"] / seen, "train_acc": 100.0 * totals["correct"] / seen}
        return with_coverage(out, {"seen": totals["images"]}, "images")

    def _step(idx: torch.Tensor, step_size: int, start: int, epoch: int, device_generator: torch.Generator,
              totals: dict[str, float]) -> None:
        rows = torch.from_numpy(item_images[idx.numpy()])
        x = augmenter(images[rows.to(images.device)].to(device, non_blocking=True), device_generator)
        targets = [ls[idx].to(device) for ls in labels]
        if rotate_aug:
            expanded = [rotation_expand(x, t, n) for t, n in zip(targets, n_classes, strict=True)]
            x = expanded[0][0]
            targets = [t for _, t in expanded]
        outputs = compute.forward(classifier, x)
        loss = torch.stack([F.cross_entropy(o, t) for o, t in zip(outputs, targets, strict=True)]).mean()
        value = descend(loss, share_weight(len(idx), step_size), optimizer, epoch, f"batch {start // batch_size + 1}")
        totals["loss"] += value * len(x)
        totals["correct"] += int((outputs[0].argmax(-1) == targets[0]).sum())
        totals["seen"] += len(x)
        totals["images"] += len(idx)

    return run


@dataclass(frozen=True)
class SupervisedSettings:
    """One supervised pre-training run (learn_labeler's second half, sup_baseline).

    Attributes:
        optim: optimiser and schedule.
        validation: validation tasks and model selection.
        batch_size: images per step.
        augment: training-time augmentation.
        rotate_aug: every class gets four rotated copies (label + r * n_classes).
        seed: seeds the batch order and the augmentation draws.
        progress: draw a bar per epoch with rate and time left (resolve ``auto`` with ``resolve_progress``).
        report: metrics.csv, TensorBoard events and the learning-curve plot (None: none of them).
        compute: autocast precision and memory layout of the network passes (resolved against the device).
    """

    optim: OptimSettings
    validation: ValidationSettings
    batch_size: int = 128
    augment: AugmentSettings = field(default_factory=AugmentSettings)
    rotate_aug: bool = False
    seed: int = 0
    progress: bool = False
    report: ReportSettings | None = field(default_factory=ReportSettings)
    compute: ComputeSettings = field(default_factory=ComputeSettings)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise MelaError(f"batch_size must be at least 1, got {self.batch_size}")
        distributed.check_divisible(self.batch_size, "batch_size")


def train_supervised(
    model: FeatureModel,
    images: ImageSplit,
    item_images: np.ndarray,
    label_sets: list[np.ndarray],
    val: ImageSplit,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    settings: SupervisedSettings,
    device: torch.device,
    run_dir: Path,
    log: Callable[[str], None],
    metadata: dict,
) -> tuple[TrainOutcome, list[int]]:
    """Cross-entropy pre-training of ``model`` + linear head(s); returns the outcome and classes per head.

    ``item_images`` are rows of ``images.images``; ``label_sets`` one label array per head, aligned with them.
    """
    n_classes = [int(ls.max()) + 1 for ls in label_sets]
    compute = settings.compute.resolve(device, model.spec.backbone)
    model.to(device)
    classifier = compute.prepare(Classifier(model, head_sizes(n_classes, settings.rotate_aug)).to(device))
    metadata = with_preprocessing(metadata, images.images.shape[1:], mean, std)
    net = distributed.wrap(classifier, device)  # the forward/backward pass: gradients all-reduced under torchrun
    trainer = Trainer(run_dir, model, classifier, settings.optim,
                      make_validator(model, val, mean, std, settings.validation, device, compute), log, metadata,
                      settings.report)
    log(f"supervised training on {len(item_images)} images, {n_classes} classes per head, "
        f"data_aug={settings.augment.enabled} rotate_aug={settings.rotate_aug}")
    epoch_fn = supervised_epoch(net, trainer.optimizer, place_images(images.images, device), item_images,
                                label_sets, n_classes, settings.augment.build(mean, std), settings.batch_size, device,
                                settings.seed, settings.rotate_aug, settings.progress, compute)
    state = trainer.fit(epoch_fn)
    chosen = trainer.select(settings.validation.select_key)
    return TrainOutcome(chosen, dict(state.best), list(state.history)), n_classes
