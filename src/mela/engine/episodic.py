"""Episodic training with the ridge meta-learner (learn_meta_repr and fine_tune)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mela import distributed
from mela.data.augment import Augmenter, AugmentSettings, rotate90
from mela.data.base import ImageSplit
from mela.data.samplers import TaskShape, TaskSource, check_can_sample
from mela.data.tasks import TaskCollection, check_scorable, scorable_tasks, support_query
from mela.device import place_images
from mela.engine.checkpoint import with_preprocessing
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


def rank_generators(seed: int, epoch: int, device: torch.device) -> tuple[torch.Generator, torch.Generator]:
    """The epoch's CPU and device generators of this rank (rank 0's are those of a single process): each rank
    draws its own augmentations, so its share of a step is not augmented like another rank's."""
    offset = 1_000_003 * distributed.rank()
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch + offset)
    if device.type == "cpu":
        return generator, generator
    return generator, torch.Generator(device).manual_seed(seed + epoch + offset)


def share_weight(mine: int, step: int) -> float:
    """Factor on a rank's mean loss over its ``mine`` tasks or images of a ``step``-sized global batch, so that
    DDP's gradient average over the ranks is the gradient of the mean over the whole step (shares may differ
    in size in an epoch's last step)."""
    return mine * distributed.world_size() / step


def with_coverage(means: dict[str, float], totals: dict[str, float], what: str) -> dict[str, float]:
    """An epoch's mean losses, plus (under torchrun) how many ``what`` (tasks, images) all ranks together
    trained on: the same count as one process, which the log then shows."""
    means.pop("seen", None)
    if distributed.is_distributed():
        means[f"{what}_seen"] = totals.get("seen", 0.0)
    return means


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


def run_steps(model: torch.nn.Module, tasks: np.ndarray, tasks_per_step: int, progress: bool, epoch: int,
              step: Callable[[np.ndarray, int, int], None]) -> None:
    """One epoch's optimiser steps over ``tasks``, ``tasks_per_step`` at a time: ``step(share, step_size, start)``
    gets this rank's share of the step's tasks (all of them in one process); a rank without a share in the last
    step sits it out."""
    starts = range(0, len(tasks), tasks_per_step)
    with distributed.uneven_steps(model):
        for start in progress_bar(starts, progress and distributed.is_main(), f"epoch {epoch + 1}", len(starts),
                                  unit="step"):
            step_tasks = tasks[start:start + tasks_per_step]
            share = distributed.shard(step_tasks)
            if len(share):
                step(share, len(step_tasks), start)


def ridge_loss_or_diverged(epoch: int, optimizer: torch.optim.Optimizer, step_number: int,
                           *args: object) -> dict[str, torch.Tensor]:
    """:func:`task_ridge_loss` of ``args``; a singular solve stops the run as a divergence at this step."""
    try:
        return task_ridge_loss(*args)
    except RidgeSolveError as exc:
        raise diverged(epoch, optimizer, f"{exc}".split(";")[0] + f" at step {step_number}") from exc


def descend(loss: torch.Tensor, weight: float, optimizer: torch.optim.Optimizer, epoch: int, where: str) -> float:
    """One optimiser step on ``loss * weight`` (this rank's share); returns the loss. A non-finite loss stops the
    run first (``where``: "step 3", "batch 7"), so the weights stay finite."""
    value = float(loss.detach())
    if not math.isfinite(value):
        raise diverged(epoch, optimizer, f"the loss is {value} at {where}")
    optimizer.zero_grad(set_to_none=True)
    (loss * weight).backward()
    optimizer.step()
    return value


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
        generator, device_generator = rank_generators(seed, epoch, device)
        totals: dict[str, float] = {}
        # Each step's batch, (B, n_ways, per_class), is this rank's share of the step's tasks.
        run_steps(model, tasks, tasks_per_step, progress, epoch, lambda batch, size, start: _step(
            batch, size, start, epoch, generator, device_generator, totals))
        totals = distributed.sum_over_ranks(totals)
        return with_coverage({key: value / max(len(tasks), 1) for key, value in totals.items()}, totals, "tasks")

    def _step(batch: np.ndarray, step_size: int, start: int, epoch: int, generator: torch.Generator,
              device_generator: torch.Generator, totals: dict[str, float]) -> None:
        rows = torch.from_numpy(item_images[batch.reshape(-1)])
        pixels = images[rows.to(images.device)].to(device, non_blocking=True)
        x = augmenter(pixels, device_generator)
        x = x.view(len(batch), shape.n_ways, shape.per_class, *x.shape[1:])
        if rotate_aug:
            x = rotate_classes(x, generator)
        features = compute.forward(model, x.flatten(0, 2)).view(len(batch), shape.n_ways, shape.per_class, -1)
        support = features[:, :, :shape.n_shots].flatten(1, 2)
        query = features[:, :, shape.n_shots:].flatten(1, 2)
        step_number = start // tasks_per_step + 1
        parts = ridge_loss_or_diverged(epoch, optimizer, step_number, support, support_labels.expand(len(batch), -1),
                                       query, query_labels.expand(len(batch), -1), shape.n_ways, lam,
                                       loss_settings.extra_reg, loss_settings.hinge_mask)
        values = {key: float(value.detach()) for key, value in parts.items()}
        descend(parts["loss"], share_weight(len(batch), step_size), optimizer, epoch, f"step {step_number}")
        for key, value in values.items():
            totals[key] = totals.get(key, 0.0) + value * len(batch)
        totals["seen"] = totals.get("seen", 0.0) + len(batch)

    return run


def rotate_groups(x: torch.Tensor, groups: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Rotate the images of each group (a local class) by one random multiple of 90 degrees; x: (N, C, H, W)."""
    k = torch.randint(0, 4, (int(groups.max()) + 1,), generator=generator)[groups.cpu()].to(x.device)
    out = x.clone()
    for r in range(1, 4):
        chosen = (k == r).nonzero(as_tuple=True)[0]
        if len(chosen):
            out[chosen] = rotate90(x[chosen], r)
    return out


def collection_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    tasks: TaskCollection,
    images: torch.Tensor,
    augmenter: Augmenter,
    loss_settings: RidgeLossSettings,
    device: torch.device,
    seed: int,
    rotate_aug: bool = False,
    tasks_per_step: int = 1,
    progress: bool = False,
    compute: Compute = FP32,
) -> Callable[[int], dict[str, float]]:
    """Build the function that trains one epoch over a collection's tasks, each used as it is.

    Every epoch visits the tasks that give an episode (:func:`~mela.data.tasks.scorable_tasks`) in a new
    seeded order; inside a task each class's images are split in half (at least one support image; a
    single-image class is support only) by a generator seeded with (seed, epoch, task). Tasks differ in
    ways and sizes, so the ``tasks_per_step`` tasks of a step share one forward pass and each gets its own
    ridge loss; the step minimises their mean.
    """
    usable = np.flatnonzero(scorable_tasks(tasks))

    def run(epoch: int) -> dict[str, float]:
        order = usable[np.random.default_rng([seed, 0xE90C, epoch]).permutation(len(usable))]
        generator, device_generator = rank_generators(seed, epoch, device)
        totals: dict[str, float] = {}
        run_steps(model, order, tasks_per_step, progress, epoch, lambda mine, size, start: _step(
            mine, size, start, epoch, generator, device_generator, totals))
        totals = distributed.sum_over_ranks(totals)
        return with_coverage({key: value / max(len(order), 1) for key, value in totals.items() if key != "seen"},
                             totals, "tasks")

    def _step(mine: np.ndarray, step_size: int, start: int, epoch: int, generator: torch.Generator,
              device_generator: torch.Generator, totals: dict[str, float]) -> None:
        episodes = [support_query(tasks, int(t), np.random.default_rng([seed, epoch, int(t)])) for t in mine]
        episodes = [e for e in episodes if e is not None]
        rows = np.concatenate([np.concatenate([e.support, e.query]) for e in episodes])
        pixels = images[torch.from_numpy(rows).to(images.device)].to(device, non_blocking=True)
        x = augmenter(pixels, device_generator)
        if rotate_aug:
            offsets = np.cumsum([0] + [e.n_ways for e in episodes[:-1]])
            groups = np.concatenate([np.concatenate([e.support_labels, e.query_labels]) + o
                                     for e, o in zip(episodes, offsets, strict=True)])
            x = rotate_groups(x, torch.from_numpy(groups), generator)
        features = compute.forward(model, x)
        losses, values = [], {}
        at = 0
        step_number = start // tasks_per_step + 1
        for e in episodes:
            n_s, n_q = len(e.support), len(e.query)
            task_features = features[at:at + n_s + n_q]
            at += n_s + n_q
            parts = ridge_loss_or_diverged(
                epoch, optimizer, step_number, task_features[:n_s][None],
                torch.from_numpy(e.support_labels).to(device)[None], task_features[n_s:][None],
                torch.from_numpy(e.query_labels).to(device)[None], e.n_ways, loss_settings.effective_lam(n_s),
                loss_settings.extra_reg, loss_settings.hinge_mask)
            losses.append(parts["loss"])
            for key, value in parts.items():
                values[key] = values.get(key, 0.0) + float(value.detach())
        descend(torch.stack(losses).mean(), share_weight(len(mine), step_size), optimizer, epoch,
                f"step {step_number}")
        for key, value in values.items():
            totals[key] = totals.get(key, 0.0) + value
        totals["seen"] = totals.get("seen", 0.0) + len(episodes)

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
        distributed.check_divisible(self.tasks_per_step, "tasks_per_step")
        if self.loss.hinge_mask not in ("fixed", "reference"):
            raise MelaError(f"hinge_mask must be fixed or reference, got {self.loss.hinge_mask}")


def check_episodic_data(settings: EpisodicSettings, data: object, step: str) -> None:
    """Refuse, before any work, splits too small for the training or validation tasks (``data``: a ``Dataset``
    or a ``TaskDataset``, whose training tasks need one that can be split into support and query)."""
    train = data.episode_data("train")
    if isinstance(train, TaskCollection):
        check_scorable(train, f"{step}'s training tasks")
    else:
        check_can_sample(train, settings.shape, f"{step}'s training tasks on the train split of {data.name}")
    check_validation_data(settings.validation, data, step)


def train_episodic(
    model: FeatureModel,
    train: ImageSplit | TaskCollection,
    val: ImageSplit | TaskCollection,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    settings: EpisodicSettings,
    device: torch.device,
    run_dir: Path,
    log: Callable[[str], None],
    metadata: dict,
) -> tuple[TrainOutcome, int]:
    """Episodic ridge training with validation, best checkpoints and resume; returns the outcome and tasks/epoch.

    ``train`` is a base data set's split (tasks sampled in ``settings.shape``) or a task collection (its tasks
    used as they are; ``shape``, ``no_replacement``, ``fixed_db`` and ``train_db_size`` do not apply).
    """
    compute = settings.compute.resolve(device, model.spec.backbone)
    compute.prepare(model.to(device))
    metadata = with_preprocessing(metadata, train.images.shape[1:], mean, std)
    net = distributed.wrap(model, device)  # the forward/backward pass: gradients all-reduced under torchrun
    trainer = Trainer(run_dir, model, model, settings.optim,
                      make_validator(model, val, mean, std, settings.validation, device, compute), log, metadata,
                      settings.report)
    augmenter = settings.augment.build(mean, std)
    if isinstance(train, TaskCollection):
        n_tasks = int(scorable_tasks(train).sum())
        unused = train.n_tasks - n_tasks
        unused_note = "" if not unused else (
            f" ({unused} task{' has' if unused == 1 else 's have'} no class of two images, so no query: the labeler "
            "still uses them)")
        log(f"{n_tasks} training tasks per epoch, as given{unused_note}, {train.n_classes} task classes, "
            f"{train.n_items} images")
        epoch_fn = collection_epoch(net, trainer.optimizer, train, place_images(train.images, device), augmenter,
                                    settings.loss, device, settings.seed, settings.rotate_aug,
                                    settings.tasks_per_step, settings.progress, compute)
        state = trainer.fit(epoch_fn)
        chosen = trainer.select(settings.validation.select_key)
        return TrainOutcome(chosen, dict(state.best), list(state.history)), n_tasks
    shape = settings.shape
    source = TaskSource(train, shape, settings.no_replacement, settings.fixed_db, settings.train_db_size,
                        settings.seed)
    how = "fixed pile, no replacement" if settings.no_replacement else "drawn"
    log(f"{len(source)} training tasks per epoch ({how}), {train.n_classes} classes, {train.n_items} images")
    epoch_fn = episodic_epoch(net, trainer.optimizer, source, shape, place_images(train.images, device),
                              train.item_images(), augmenter, settings.loss, device,
                              settings.seed, settings.rotate_aug, settings.tasks_per_step, settings.progress, compute)
    state = trainer.fit(epoch_fn)
    chosen = trainer.select(settings.validation.select_key)
    return TrainOutcome(chosen, dict(state.best), list(state.history)), len(source)
