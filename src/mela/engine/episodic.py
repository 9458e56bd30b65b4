"""Episodic training with the ridge meta-learner (learn_meta_repr and fine_tune)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mela.data.augment import Augmenter, AugmentSettings, rotate90
from mela.data.base import ImageSplit
from mela.data.samplers import TaskShape, TaskSource, check_can_sample
from mela.device import place_images
from mela.engine.precision import FP32, Compute, ComputeSettings
from mela.engine.trainer import (
    OptimSettings,
    ReportSettings,
    Trainer,
    TrainOutcome,
    ValidationSettings,
    check_validation_data,
    make_validator,
)
from mela.errors import MelaError
from mela.methods.ridge import RidgeSolveError, task_ridge_loss
from mela.models.feature_model import FeatureModel
from mela.reporting.progress import progress_bar


@dataclass(frozen=True)
class RidgeLossSettings:
    """The meta-learner's loss options (names follow the reference's config)."""

    lam: float = 1e-3
    normalize_lam: bool = False
    extra_reg: bool = True
    hinge_mask: str = "fixed"

    def effective_lam(self, n_support: int) -> float:
        """``normalize_lam`` scales λ by the number of support samples, as the reference's option does."""
        return self.lam * n_support if self.normalize_lam else self.lam


def diverged(epoch: int, optimizer: torch.optim.Optimizer, what: str) -> MelaError:
    """The one-line error for a training loop that has blown up (shared with supervised training)."""
    lr = optimizer.param_groups[0]["lr"]
    return MelaError(f"training diverged at epoch {epoch + 1}: {what}; lower learning_rate (now {lr:g})")


def rotate_classes(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Rotate every image of a local class by the same random multiple of 90 degrees.

    x: (B, n_ways, per_class, C, H, W). A rotated class is a new class to the
    learner, which is what rotation augmentation is for in episodic training.
    """
    k = torch.randint(0, 4, x.shape[:2], generator=generator).to(x.device)
    out = x.clone()
    for r in range(1, 4):
        sel = (k == r).nonzero(as_tuple=True)
        if len(sel[0]):
            out[sel] = rotate90(x[sel].flatten(0, 1), r).view_as(x[sel])
    return out


def episodic_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    source: TaskSource,
    shape: TaskShape,
    images: torch.Tensor,
    item_images: np.ndarray,
    augmenter: Augmenter,
    loss_settings: RidgeLossSettings,
    device: torch.device,
    seed: int,
    rotate_aug: bool = False,
    tasks_per_step: int = 1,
    progress: bool = False,
    compute: Compute = FP32,
) -> Callable[[int], dict[str, float]]:
    """Build the function that trains one epoch over ``source``'s tasks.

    ``images`` is the split's uint8 (N, H, W, C) tensor (CPU or device);
    ``item_images`` maps item indices to its rows. ``compute`` runs the network pass (autocast, memory
    layout); the ridge loss always gets float32 features.
    """
    lam = loss_settings.effective_lam(shape.n_ways * shape.n_shots)
    local = torch.arange(shape.n_ways, device=device)
    support_labels = local.repeat_interleave(shape.n_shots)
    query_labels = local.repeat_interleave(shape.n_queries)

    def run(epoch: int) -> dict[str, float]:
        tasks = source.epoch_tasks(epoch)
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        device_generator = generator if device.type == "cpu" else torch.Generator(device).manual_seed(seed + epoch)
        totals: dict[str, float] = {}
        steps = range(0, len(tasks), tasks_per_step)
        for start in progress_bar(steps, progress, f"epoch {epoch + 1}", len(steps), unit="step"):
            batch = tasks[start:start + tasks_per_step]  # (B, n_ways, per_class)
            rows = torch.from_numpy(item_images[batch.reshape(-1)])
            pixels = images[rows.to(images.device)].to(device, non_blocking=True)
            x = augmenter(pixels, device_generator)
            x = x.view(len(batch), shape.n_ways, shape.per_class, *x.shape[1:])
            if rotate_aug:
                x = rotate_classes(x, generator)
            features = compute.forward(model, x.flatten(0, 2)).view(len(batch), shape.n_ways, shape.per_class, -1)
            support = features[:, :, :shape.n_shots].flatten(1, 2)
            query = features[:, :, shape.n_shots:].flatten(1, 2)
            try:
                parts = task_ridge_loss(support, support_labels.expand(len(batch), -1), query,
                                        query_labels.expand(len(batch), -1), shape.n_ways, lam,
                                        loss_settings.extra_reg, loss_settings.hinge_mask)
            except RidgeSolveError as exc:
                raise diverged(epoch, optimizer, f"{exc}".split(";")[0] + f" at step {start // tasks_per_step + 1}") \
                    from exc
            values = {key: float(value.detach()) for key, value in parts.items()}
            if not math.isfinite(values["loss"]):  # checked before the step, so the weights stay finite
                raise diverged(epoch, optimizer, f"the loss is {values['loss']} at step {start // tasks_per_step + 1}")
            optimizer.zero_grad(set_to_none=True)
            parts["loss"].backward()
            optimizer.step()
            for key, value in values.items():
                totals[key] = totals.get(key, 0.0) + value * len(batch)
        return {key: value / max(len(tasks), 1) for key, value in totals.items()}

    return run


@dataclass(frozen=True)
class EpisodicSettings:
    """One episodic training run (learn_meta_repr, fine_tune); names follow the reference's config.

    Attributes:
        shape: the training task shape (``n_ways``, ``n_shots``, ``n_queries``).
        optim: optimiser and schedule.
        validation: validation tasks and model selection.
        augment: training-time augmentation.
        loss: the ridge loss options.
        no_replacement, fixed_db, train_db_size: how tasks are sampled (see :class:`TaskSource`).
        tasks_per_step: tasks per optimiser step.
        rotate_aug: rotate each local class by a random multiple of 90 degrees.
        seed: seeds the task pile, its order and the augmentation draws.
        progress: draw a bar per epoch with rate and time left (resolve ``auto`` with ``resolve_progress``).
        report: metrics.csv, TensorBoard events and the learning-curve plot (None: none of them).
        compute: autocast precision and memory layout of the network passes (resolved against the device).
    """

    shape: TaskShape
    optim: OptimSettings
    validation: ValidationSettings
    augment: AugmentSettings = field(default_factory=AugmentSettings)
    loss: RidgeLossSettings = field(default_factory=RidgeLossSettings)
    no_replacement: bool = True
    fixed_db: bool = True
    train_db_size: int = 2800
    tasks_per_step: int = 1
    rotate_aug: bool = False
    seed: int = 0
    progress: bool = False
    report: ReportSettings | None = field(default_factory=ReportSettings)
    compute: ComputeSettings = field(default_factory=ComputeSettings)

    def __post_init__(self) -> None:
        if self.tasks_per_step < 1:
            raise MelaError(f"tasks_per_step must be at least 1, got {self.tasks_per_step}")
        if self.loss.hinge_mask not in ("fixed", "reference"):
            raise MelaError(f"hinge_mask must be fixed or reference, got {self.loss.hinge_mask}")


def check_episodic_data(settings: EpisodicSettings, data: object, step: str) -> None:
    """Refuse, before any work, splits too small for the training or validation tasks (``data``: a ``Dataset``)."""
    check_can_sample(data.split("train"), settings.shape, f"{step}'s training tasks on the train split of {data.name}")
    check_validation_data(settings.validation, data, step)


def train_episodic(
    model: FeatureModel,
    train: ImageSplit,
    val: ImageSplit,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    settings: EpisodicSettings,
    device: torch.device,
    run_dir: Path,
    log: Callable[[str], None],
    metadata: dict,
) -> tuple[TrainOutcome, int]:
    """Episodic ridge training with validation, best checkpoints and resume; returns the outcome and tasks/epoch."""
    shape = settings.shape
    source = TaskSource(train, shape, settings.no_replacement, settings.fixed_db, settings.train_db_size,
                        settings.seed)
    how = "fixed pile, no replacement" if settings.no_replacement else "drawn"
    log(f"{len(source)} training tasks per epoch ({how}), {train.n_classes} classes, {train.n_items} images")
    compute = settings.compute.resolve(device, model.spec.backbone)
    compute.prepare(model.to(device))
    trainer = Trainer(run_dir, model, model, settings.optim,
                      make_validator(model, val, mean, std, settings.validation, device, compute), log, metadata,
                      settings.report)
    epoch_fn = episodic_epoch(model, trainer.optimizer, source, shape, place_images(train.images, device),
                              train.item_images(), settings.augment.build(mean, std), settings.loss, device,
                              settings.seed, settings.rotate_aug, settings.tasks_per_step, settings.progress, compute)
    state = trainer.fit(epoch_fn)
    chosen = trainer.select(settings.validation.select_key)
    return TrainOutcome(chosen, dict(state.best), list(state.history)), len(source)
