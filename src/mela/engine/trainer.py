"""One training loop for every step: optimiser, lr schedule, validation, best checkpoints, resume.

Steps differ only in what one epoch does (episodic ridge loss or supervised
cross-entropy); they hand that in as a function and get checkpointing and
resuming for free.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from mela import distributed
from mela.data.base import ImageSplit
from mela.data.samplers import TaskShape, check_can_sample
from mela.data.tasks import TaskCollection, check_scorable
from mela.engine.checkpoint import load_checkpoint, model_payload, save_atomic
from mela.engine.precision import FP32, Compute
from mela.errors import MelaError
from mela.methods.evaluator import EvalProtocol, evaluate_collection, evaluate_model
from mela.models.feature_model import FeatureModel
from mela.reporting.progress import format_epoch_line, parse_auto_flag, time_left

if TYPE_CHECKING:
    from mela.reporting.metrics import MetricsWriter


def parse_decay_epochs(text: str | int | Iterable[int]) -> tuple[int, ...]:
    """``"17,22"`` (the reference's format) -> (17, 22); also accepts an int or a list."""
    if isinstance(text, int):
        return (text,)
    if not isinstance(text, str):
        return tuple(int(e) for e in text)
    try:
        return tuple(int(e) for e in text.replace(" ", "").split(",") if e)
    except ValueError as exc:
        raise MelaError(f"lr_decay_epochs must look like \"17,22\", got {text!r}") from exc


@dataclass(frozen=True)
class OptimSettings:
    """Optimiser and schedule (names follow the reference's config)."""

    epochs: int
    learning_rate: float
    sgd: bool = True
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_decay_epochs: tuple[int, ...] = ()
    lr_decay_rate: float = 0.1

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise MelaError(f"epochs must be at least 1, got {self.epochs}")
        if self.learning_rate <= 0:
            raise MelaError(f"learning_rate must be positive, got {self.learning_rate}")

    @property
    def first_decay(self) -> int:
        """Epoch (1-based) from which validation runs: the first lr decay, or the last epoch."""
        return min([e for e in self.lr_decay_epochs if e >= 1] + [self.epochs])


@dataclass(frozen=True)
class ValidationSettings:
    """Validation inside a training step.

    Attributes:
        shapes: one validation task shape per shot count (``val_shots``).
        n_tasks: validation tasks per shape (``test_db_size``).
        protocol: the test-time classifier (the same as meta_eval's).
        select_shots: the shot count whose best validation picks ``model.pt`` (``val_n_shots``).
    """

    shapes: tuple[TaskShape, ...]
    n_tasks: int
    protocol: EvalProtocol = EvalProtocol()
    select_shots: int = 5

    def __post_init__(self) -> None:
        shots = [shape.n_shots for shape in self.shapes]
        if self.n_tasks < 1:
            raise MelaError(f"test_db_size (validation tasks) must be at least 1, got {self.n_tasks}")
        if self.select_shots not in shots:
            raise MelaError(f"val_n_shots={self.select_shots} picks the model by a validation that does not run: "
                            f"add it to val_shots (now {shots})")

    @property
    def select_key(self) -> str:
        return f"{self.select_shots}shot"


def check_validation_data(settings: ValidationSettings, data: object, step: str) -> None:
    """Refuse, before any work, a val split too small for the validation tasks (``data``: a ``Dataset``)."""
    val = data.episode_data("val")
    if isinstance(val, TaskCollection):
        check_scorable(val, f"{step}'s validation tasks")
        return
    for shape in settings.shapes:
        check_can_sample(val, shape, f"{step}'s validation tasks on the val split of {data.name}")


def make_validator(
    model: FeatureModel, val: ImageSplit | TaskCollection, mean: tuple[float, ...], std: tuple[float, ...],
    settings: ValidationSettings, device: torch.device, compute: Compute = FP32,
) -> Callable[[], dict[str, float]]:
    """Validation: mean test-time accuracy on ``n_tasks`` val tasks of each shape, keyed ``<k>shot``.

    On a task collection the val tasks are used as given: inside each, every class gives ``k`` support images
    (at most all but one) and the rest are queries (at most ``n_tasks`` tasks). The features are extracted
    under the run's ``compute`` and handed to the heads as float32.
    """

    def run() -> dict[str, float]:
        if isinstance(val, TaskCollection):
            shots = [shape.n_shots for shape in settings.shapes]
            results = evaluate_collection(model, val, shots, settings.protocol, mean, std, device,
                                          max_tasks=settings.n_tasks, compute=compute)
            return {f"{k}shot": result.accuracy.acc for k, result in zip(shots, results, strict=True)}
        results = evaluate_model(model, val, list(settings.shapes), settings.n_tasks, settings.protocol, mean, std,
                                 device, compute)
        return {f"{shape.n_shots}shot": result.overall.acc
                for shape, result in zip(settings.shapes, results, strict=True)}

    return run


@dataclass(frozen=True)
class ReportSettings:
    """What a training run leaves for people to look at, besides its log and checkpoints.

    Attributes:
        tensorboard: TensorBoard event files in ``<run>/tb``: ``auto`` (when the package is installed), ``true``
            (required), ``false``. ``metrics.csv`` (one row per epoch) is written whenever reporting is on.
        plots: draw ``learning_curves.png`` at the end of training.
    """

    tensorboard: bool | str = "auto"
    plots: bool = True

    def __post_init__(self) -> None:
        # A bad value, or tensorboard=true without the package, fails here: before any data loads.
        if parse_auto_flag("tensorboard", self.tensorboard):
            from mela.reporting.metrics import tensorboard_writer_class

            if tensorboard_writer_class() is None:
                raise MelaError("tensorboard=true needs the tensorboard package: pip install mela[tb], "
                                "or set tensorboard=auto")


@dataclass(frozen=True)
class TrainOutcome:
    """What a training recipe hands back: the checkpoint later steps should load and the validation record."""

    chosen: Path
    best_val: dict[str, float]
    history: list[dict]


def make_optimizer(params: Iterable[nn.Parameter], settings: OptimSettings) -> torch.optim.Optimizer:
    """SGD with momentum (``SGD=true``) or AdamW."""
    params = [p for p in params if p.requires_grad]
    if settings.sgd:
        return torch.optim.SGD(params, lr=settings.learning_rate, momentum=settings.momentum,
                               weight_decay=settings.weight_decay)
    return torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)


def learning_rate_at(settings: OptimSettings, epoch: int) -> float:
    """lr for 0-based ``epoch``: multiplied by the decay rate after each decay epoch (1-based), as the reference."""
    n_decays = sum(epoch + 1 > e for e in settings.lr_decay_epochs)
    return settings.learning_rate * settings.lr_decay_rate**n_decays


@dataclass
class TrainState:
    """What survives between epochs and across a resume."""

    epoch: int = 0
    best: dict[str, float] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)


class Trainer:
    """Runs epochs, validates, keeps ``best_<k>shot.pt`` per validation shot count, and resumes from ``last.pt``.

    Args:
        run_dir: the run's folder (checkpoints go here).
        model: the feature model to save (the part later steps load).
        trainable: the module whose parameters the optimiser updates (model, or model + heads).
        settings: optimiser and schedule.
        validate: ``validate() -> {"1shot": acc, "5shot": acc}`` or None.
        log: where progress lines go (one per epoch, with its duration and the time left).
        metadata: extra fields stored in every model file (dataset, step, ...); ``step`` also names the run's
            rows in ``metrics.csv`` and titles its plot.
        report: ``metrics.csv``, TensorBoard events and ``learning_curves.png``; None writes none of them.
    """

    def __init__(
        self,
        run_dir: Path,
        model: FeatureModel,
        trainable: nn.Module,
        settings: OptimSettings,
        validate: Callable[[], dict[str, float]] | None,
        log: Callable[[str], None],
        metadata: dict | None = None,
        report: ReportSettings | None = None,
    ) -> None:
        self.run_dir, self.model, self.trainable, self.settings = Path(run_dir), model, trainable, settings
        self.validate, self.log, self.metadata, self.report = validate, log, dict(metadata or {}), report
        self.optimizer = make_optimizer(trainable.parameters(), settings)
        self.state = TrainState()

    @property
    def last_path(self) -> Path:
        return self.run_dir / "last.pt"

    def _resume(self) -> None:
        # Rank 0 reads last.pt and hands it to the others: every rank resumes from the same state, with no
        # need for the run folder to be visible to them (other machines).
        saved = load_checkpoint(self.last_path, "cpu") if distributed.is_main() and self.last_path.exists() else None
        saved = distributed.broadcast_object(saved)
        if saved is None:
            return
        self.trainable.load_state_dict(saved["trainable"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.state = TrainState(saved["epoch"], saved["best"], saved["history"])
        self.log(f"resumed from {self.last_path} at epoch {self.state.epoch}/{self.settings.epochs}")

    def _save_model(self, name: str, **extra: object) -> None:
        if not distributed.is_main():
            return
        save_atomic(model_payload(self.model, **self.metadata, **extra), self.run_dir / name)

    @property
    def step(self) -> str:
        return str(self.metadata.get("step", "train"))

    def fit(self, train_epoch: Callable[[int], dict[str, float]]) -> TrainState:
        """Train from the current state (resumed if ``last.pt`` exists) to ``settings.epochs``."""
        self._resume()
        metrics = None
        if self.report is not None and distributed.is_main():
            from mela.reporting.metrics import MetricsWriter

            metrics = MetricsWriter(self.run_dir, self.step, self.report.tensorboard, self.log)
        try:
            self._epochs(train_epoch, metrics)
        finally:
            if metrics is not None:
                metrics.close()
        self._save_model("final.pt", epoch=self.state.epoch)
        if distributed.is_main():
            (self.run_dir / "history.json").write_text(json.dumps(self.state.history, indent=1))
            if self.report is not None and self.report.plots and self.state.history:
                from mela.reporting.plots import learning_curves

                learning_curves(self.state.history, self.run_dir / "learning_curves.png",
                                title=f"{self.step} {self.run_dir.name}")
        distributed.barrier()  # the other ranks go on once rank 0's files are complete
        return self.state

    def _epochs(self, train_epoch: Callable[[int], dict[str, float]], metrics: MetricsWriter | None) -> None:
        durations: list[float] = []  # this process's epochs only: a resume has none for the skipped ones
        for epoch in range(self.state.epoch, self.settings.epochs):
            started = time.perf_counter()
            lr = learning_rate_at(self.settings, epoch)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.trainable.train()
            trained = {k: float(v) for k, v in train_epoch(epoch).items()}
            if any(not math.isfinite(v) for v in trained.values()):
                raise MelaError(f"training diverged at epoch {epoch + 1} ({trained}); lower learning_rate")
            record: dict = {"epoch": epoch + 1, "lr": lr, **trained}
            validating = epoch + 1 >= self.settings.first_decay or epoch + 1 == self.settings.epochs
            if self.validate is not None and validating:
                scores = self.validate()
                for key, acc in scores.items():
                    record[f"val_{key}"] = acc
                    if acc > self.state.best.get(key, -1.0):
                        self.state.best[key] = acc
                        self._save_model(f"best_{key}.pt", epoch=epoch + 1, val_acc=acc)
            record["seconds"] = time.perf_counter() - started
            durations.append(record["seconds"])
            self.state.history.append(record)
            self.state.epoch = epoch + 1
            eta = time_left(durations, self.state.epoch, self.settings.epochs)
            self.log(format_epoch_line(epoch + 1, self.settings.epochs, record["seconds"], record, eta))
            if metrics is not None:
                metrics.log_epoch(record)
            if distributed.is_main():
                save_atomic({"trainable": self.trainable.state_dict(), "optimizer": self.optimizer.state_dict(),
                             "epoch": self.state.epoch, "best": self.state.best, "history": self.state.history},
                            self.last_path)

    def select(self, key: str | None) -> Path:
        """The model file later steps should use: best by validation at ``key`` (e.g. ``5shot``), else final."""
        best = self.run_dir / f"best_{key}.pt"
        chosen = best if key and best.exists() else self.run_dir / "final.pt"
        return distributed.broadcast_object(chosen)  # rank 0 sees the folder: the others take its answer
