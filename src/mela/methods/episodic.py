"""Episodic training with the ridge meta-learner (learn_meta_repr and fine_tune)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from mela.data.augment import Augmenter, rotate90
from mela.data.samplers import TaskShape, TaskSource
from mela.errors import MelaError
from mela.methods.ridge import RidgeSolveError, task_ridge_loss


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
) -> Callable[[int], dict[str, float]]:
    """Build the function that trains one epoch over ``source``'s tasks.

    ``images`` is the split's uint8 (N, H, W, C) tensor (CPU or device);
    ``item_images`` maps item indices to its rows.
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
        for start in tqdm(steps, desc=f"epoch {epoch + 1}", disable=not progress, leave=False):
            batch = tasks[start:start + tasks_per_step]  # (B, n_ways, per_class)
            rows = torch.from_numpy(item_images[batch.reshape(-1)])
            pixels = images[rows.to(images.device)].to(device, non_blocking=True)
            x = augmenter(pixels, device_generator)
            x = x.view(len(batch), shape.n_ways, shape.per_class, *x.shape[1:])
            if rotate_aug:
                x = rotate_classes(x, generator)
            features = model(x.flatten(0, 2)).view(len(batch), shape.n_ways, shape.per_class, -1)
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
