"""mela from Python: load data, build a model, meta-train, infer global labels, pre-train, evaluate.

Every function returns plain dataclasses and writes files only where asked
(``run_dir=...``; :func:`run_pipeline` writes its run folders in the workspace, as
``mela pipeline`` does). The CLI steps are built from the same pieces.

    import mela

    glyphs = mela.open_dataset("glyphs")
    model = mela.create_model("convnet4", in_channels=1)
    trained = mela.meta_train(model, glyphs, epochs=1)
    scores = mela.evaluate(trained.model, glyphs, shots=(1, 5))
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mela.data.augment import AugmentSettings
from mela.data.base import ImageSplit
from mela.data.registry import Dataset, DatasetRef
from mela.data.registry import open_dataset as _open_dataset
from mela.data.samplers import TaskShape, labeling_pile
from mela.data.task_dataset import TaskDataset, TaskSplitSettings, open_task_dataset
from mela.data.tasks import LoadOptions, TaskCollection, from_pairs
from mela.device import pick_device
from mela.engine.checkpoint import model_metadata
from mela.engine.episodic import EpisodicSettings, RidgeLossSettings, train_episodic
from mela.engine.precision import ComputeSettings, backbone_of
from mela.engine.supervised import SupervisedSettings, train_supervised
from mela.engine.trainer import OptimSettings, ReportSettings, TrainOutcome, ValidationSettings
from mela.errors import MelaError
from mela.inference.model_io import load_trained_model
from mela.methods.collection_labels import collection_image_features, ragged_features
from mela.methods.collection_labels import labelled_items as collection_labelled_items
from mela.methods.evaluator import EvalProtocol, evaluate_collection, evaluate_model
from mela.methods.global_labels import GlobalLabels, pile_features
from mela.methods.global_labels import infer_global_labels as _infer_from_features
from mela.methods.labeler import LabelerConfig
from mela.models.feature_model import FeatureModel, build_model
from mela.workspace import data_dir, workspace_root

Log = Callable[[str], None]
DeviceLike = str | torch.device | None


def _device(device: DeviceLike) -> torch.device:
    return device if isinstance(device, torch.device) else pick_device(str(device or "auto"))


def _dataset(dataset: Dataset | TaskDataset | str, workspace: str | None = None) -> Dataset | TaskDataset:
    if isinstance(dataset, (Dataset, TaskDataset)):
        return dataset
    return open_dataset(dataset, workspace=workspace)


def _quiet(_message: str) -> None:
    pass


def open_dataset(name: str = "glyphs", *, workspace: str | None = None, path: str | None = None,
                 split_file: str | None = None, image_size: int = 84, seed: int = 0) -> Dataset:
    """A registered data set; ``dataset.split("train")`` loads a split (once) as an :class:`ImageSplit`.

    ``name="custom"`` reads your images from ``path`` (a folder of class folders or an ``.npz``).
    Benchmark data sets are read from ``$WORKSPACE/metaL_data`` (or ``workspace``).
    """
    ref = DatasetRef(name, path, split_file, options=LoadOptions(image_size=image_size), seed=seed)
    return _open_dataset(ref, data_dir(workspace_root(workspace)))


def open_tasks(source: str | Path | Sequence[tuple], *, truth: str | Path | None = None, image_size: int | None = None,
               skip_bad_tasks: bool = False, holdout: float = 0.1, val: float = 0.05, seed: int = 0) -> TaskDataset:
    """Your locally labelled tasks, ready for every function below (``dataset=tasks`` on the command line).

    ``source`` is a folder ``TASKS/<task>/<local class>/<images>``, a manifest ``.csv`` (``path,task,local_label``)
    or a list of ``(images, local_labels)`` pairs (optionally ``(images, local_labels, global_labels)`` to score
    the labeler). The tasks are shared out from ``seed``: ``holdout`` of them for :func:`evaluate_tasks`,
    ``val`` of the rest to validate training, the others to train and label.
    """
    shares = TaskSplitSettings(holdout, val, seed)
    if isinstance(source, (str, Path)):
        options = LoadOptions(image_size, None if truth is None else str(truth), skip_bad_tasks)
        return open_task_dataset(str(source), options=options, settings=shares)
    options = LoadOptions(image_size=image_size, skip_bad_tasks=skip_bad_tasks)  # pairs carry their own truth
    return TaskDataset(from_pairs(list(source), options=options), shares)


def load_dataset(name: str = "glyphs", split: str = "train", **options: object) -> ImageSplit:
    """One split: ``images`` (N, H, W, C) uint8 and ``labels`` (N,) int64; options as :func:`open_dataset`."""
    return open_dataset(name, **options).split(split)


def create_model(name: str = "convnet4", in_channels: int = 3, *, residual_mlp: bool = False,
                 **options: object) -> FeatureModel:
    """A fresh feature model: images (B, C, H, W) -> features (B, ``model.feat_dim``). ``mela models`` lists names;
    ``options`` go to the backbone (a config's ``model_options``), e.g. ``create_model("convnet4", 1, hidden=32)``."""
    return build_model(name, in_channels, None, residual_mlp, options)


def load_model(path: str | Path, device: DeviceLike = None, *, workspace: str | None = None) -> FeatureModel:
    """A trained model on ``device``: a model file of any step (``model.pt``, ``best_5shot.pt``, ...), a folder
    written by :func:`export_model`, a run folder or run name, or a pipeline run (its ``mela`` model).

    ``model.preprocessing`` says what its input must look like (size, channels, mean / std); :func:`embed` and
    :class:`FewShotClassifier` apply it to raw images. A file from before mela 0.3.0 gets its data set's
    statistics when they are known (with a warning), else ``preprocessing`` None.
    """
    import warnings

    trained = load_trained_model(path, _device(device), workspace, require_preprocessing=False)
    for note in trained.notes:
        warnings.warn(note, UserWarning, stacklevel=2)
    return trained.model


def export_model(model: FeatureModel | str | Path, out: str | Path, *, formats: Sequence[str] = ("safetensors",),
                 overwrite: bool = False) -> Path:
    """Write ``out/model.safetensors`` + ``out/mela_model.json`` (and ``model.onnx`` / ``model.torchscript.pt``
    for ``formats`` onnx / torchscript), as ``mela export``; ``model`` is a loaded model or any reference
    :func:`load_model` takes. Returns the folder."""
    from mela.inference.export import export_model as _export

    trained = load_trained_model(model, "cpu")
    return _export(trained, out, tuple(dict.fromkeys(["safetensors", *formats])), overwrite)


@dataclass(frozen=True)
class TrainResult:
    """A trained model (the checkpoint selected by validation, loaded) and its record.

    Attributes:
        model: the selected weights (best validation at ``select_shots``).
        best_val: best validation accuracy (%) per shot count, e.g. ``{"1shot": 91.2, "5shot": 97.0}``.
        history: one dict per epoch (lr, losses, validation accuracies).
        checkpoint: the selected checkpoint file when ``run_dir`` was given, else None.
    """

    model: FeatureModel
    best_val: dict[str, float]
    history: list[dict]
    checkpoint: Path | None = None


def _train_in(run_dir: str | Path | None, device: torch.device,
              train: Callable[[Path], TrainOutcome]) -> TrainResult:
    """Run ``train(folder)`` in ``run_dir`` (kept) or a temporary folder (removed); load the chosen model."""
    if run_dir is not None:
        folder = Path(run_dir)
        folder.mkdir(parents=True, exist_ok=True)
        outcome = train(folder)
        return TrainResult(load_model(outcome.chosen, device), outcome.best_val, outcome.history, outcome.chosen)
    with tempfile.TemporaryDirectory(prefix="mela-") as tmp:
        outcome = train(Path(tmp))
        return TrainResult(load_model(outcome.chosen, device), outcome.best_val, outcome.history, None)


def _report(run_dir: str | Path | None) -> ReportSettings | None:
    """A kept ``run_dir`` gets metrics.csv, TensorBoard events (when installed) and learning_curves.png; a
    temporary folder gets none of them."""
    return ReportSettings() if run_dir is not None else None


def _validation(val_shots: Sequence[int], n_ways: int, n_queries: int, val_tasks: int) -> ValidationSettings:
    shapes = tuple(TaskShape(n_ways, int(k), n_queries) for k in val_shots)
    return ValidationSettings(shapes, val_tasks, EvalProtocol(), int(max(val_shots)))


def meta_train(
    model: FeatureModel,
    dataset: Dataset | str,
    *,
    n_ways: int = 5,
    n_shots: int = 5,
    n_queries: int = 5,
    epochs: int = 6,
    learning_rate: float = 0.05,
    lr_decay_epochs: Sequence[int] = (),
    tasks_per_step: int = 4,
    train_db_size: int = 2800,
    no_replacement: bool = True,
    data_aug: bool = True,
    hflip: bool = True,
    val_shots: Sequence[int] = (1, 5),
    val_tasks: int = 200,
    seed: int = 0,
    device: DeviceLike = None,
    run_dir: str | Path | None = None,
    log: Log | None = print,
    settings: EpisodicSettings | None = None,
) -> TrainResult:
    """Step 1: train ``model`` with the ridge meta-learner on locally labelled tasks of the train split.

    Tasks are ``n_ways``-way with ``n_shots`` + ``n_queries`` images per class; validation on the val split
    picks the returned weights (best at the largest of ``val_shots``). On a task collection (:func:`open_tasks`)
    its training tasks are used as given (the task shape does not apply) and its val tasks validate.
    ``settings`` overrides every keyword.
    ``run_dir`` keeps the checkpoints there (and resumes from them), with metrics.csv and learning_curves.png;
    otherwise nothing is written.
    """
    data, device = _dataset(dataset), _device(device)
    if settings is None:
        settings = EpisodicSettings(
            shape=TaskShape(n_ways, n_shots, n_queries),
            optim=OptimSettings(epochs, learning_rate, lr_decay_epochs=tuple(lr_decay_epochs)),
            validation=_validation(val_shots, n_ways, n_queries, val_tasks),
            augment=AugmentSettings(data_aug, hflip), loss=RidgeLossSettings(), no_replacement=no_replacement,
            fixed_db=True, train_db_size=train_db_size, tasks_per_step=tasks_per_step, seed=seed,
            report=_report(run_dir))
    train, val = data.episode_data("train"), data.episode_data("val")
    return _train_in(run_dir, device, lambda folder: train_episodic(
        model, train, val, data.mean, data.std, settings, device, folder, log or _quiet,
        model_metadata("learn_meta_repr", data))[0])


def label_pile(dataset: Dataset | str, *, n_ways: int = 5, images_per_class: int = 10, no_replacement: bool = True,
               n_tasks: int = 2800, seed: int = 0) -> np.ndarray:
    """The task pile of the train split the labeler reads: (T, n_ways, images_per_class) item indices.

    With ``no_replacement`` every image is used at most once (the pile's size follows from the data);
    otherwise ``n_tasks`` seeded tasks.
    """
    shape = TaskShape(n_ways, images_per_class - 1, 1) if images_per_class > 1 else TaskShape(n_ways, 1, 0)
    return labeling_pile(_dataset(dataset).split("train"), shape, no_replacement, n_tasks, seed)


def task_features(model: torch.nn.Module, dataset: Dataset | str, tasks: np.ndarray,
                  device: DeviceLike = None) -> np.ndarray:
    """(T, n_ways, m, d) features (no augmentation) of the train-split items that ``tasks`` (T, n_ways, m) index."""
    data, device = _dataset(dataset), _device(device)
    return pile_features(model.to(device), data.split("train"), np.asarray(tasks), data.mean, data.std, device)


def infer_global_labels(
    features_or_model: np.ndarray | torch.nn.Module,
    tasks: np.ndarray | None = None,
    dataset: Dataset | str | None = None,
    *,
    labeler: LabelerConfig | None = None,
    centroids: np.ndarray | None = None,
    device: DeviceLike = None,
) -> GlobalLabels:
    """Step 2a: cluster the classes of a task pile into global classes.

    Args:
        features_or_model: (T, n_ways, m, d) features of each task class's m images, or a model that computes
            them from ``dataset``'s train split for the item indices in ``tasks``.
        tasks: (T, n_ways, m) item indices (see :func:`label_pile`); needed with a model.
        dataset: whose train split ``tasks`` index; needed with a model.
        labeler: clustering settings (default: the improved labeler, ``K=400``).
        centroids: reuse fitted (K, d) centroids instead of clustering.

    ``device`` (default: a GPU when there is one) also computes the labeler's key-centroid distances.
    Returns a :class:`GlobalLabels`: ``centroids``, ``assigned`` (T, n_ways) and ``report(true_classes)``.
    With a task collection as ``dataset`` (and a model), its training tasks are labelled as given: ``assigned``
    has one entry per task class of ``dataset.tasks("train")``.
    """
    if isinstance(dataset, TaskDataset):
        if not isinstance(features_or_model, torch.nn.Module):
            raise MelaError("infer_global_labels on a task collection takes the model that computes its features")
        device = _device(device)
        train = dataset.tasks("train")
        image_features = collection_image_features(features_or_model.to(device), train, dataset.mean, dataset.std,
                                                   device)
        return _infer_from_features(ragged_features(train, image_features), labeler or LabelerConfig(), centroids,
                                    device)
    features = features_or_model
    if isinstance(features_or_model, torch.nn.Module):
        if tasks is None or dataset is None:
            raise MelaError("infer_global_labels with a model needs the tasks and the dataset they index")
        features = task_features(features_or_model, dataset, tasks, device)
    features = np.asarray(features)
    if features.ndim != 4:
        raise MelaError(f"features must be (tasks, n_ways, images per class, dim), got shape {features.shape}")
    return _infer_from_features(features, labeler or LabelerConfig(), centroids, _device(device))


def pretrain(
    model: FeatureModel,
    dataset: Dataset | str,
    labels: GlobalLabels | None = None,
    tasks: np.ndarray | None = None,
    *,
    epochs: int = 8,
    batch_size: int = 128,
    learning_rate: float = 0.05,
    lr_decay_epochs: Sequence[int] = (),
    data_aug: bool = True,
    hflip: bool = True,
    rotate_aug: bool = False,
    val_shots: Sequence[int] = (1, 5),
    val_tasks: int = 200,
    seed: int = 0,
    device: DeviceLike = None,
    run_dir: str | Path | None = None,
    log: Log | None = print,
    settings: SupervisedSettings | None = None,
) -> TrainResult:
    """Step 2b: supervised pre-training on the inferred ``labels`` of ``tasks`` (the oracle when both are None).

    ``labels`` and ``tasks`` come from :func:`infer_global_labels` and :func:`label_pile`; without them the
    train split's true labels are used (``mela sup-baseline``). On a task collection ``tasks`` is not needed.
    """
    data, device = _dataset(dataset), _device(device)
    train, val = data.episode_data("train"), data.episode_data("val")
    if isinstance(train, TaskCollection):
        if labels is None:
            if train.class_truth is None:
                raise MelaError("pretrain without labels trains on the true labels, and this task collection has "
                                "none: pass the labels from infer_global_labels")
            item_images, label_sets = train.item_image, [np.unique(train.class_truth[train.item_class],
                                                                   return_inverse=True)[1]]
        else:
            item_images, inferred = collection_labelled_items(train, labels)
            label_sets = [inferred]
    elif labels is None:
        item_images, label_sets = train.item_images(), [train.labels]
    else:
        if tasks is None:
            raise MelaError("pretrain with inferred labels needs the tasks they were inferred from")
        items, inferred = labels.labelled_items(np.asarray(tasks))
        item_images, label_sets = train.item_images()[items], [inferred]
    if settings is None:
        settings = SupervisedSettings(
            optim=OptimSettings(epochs, learning_rate, lr_decay_epochs=tuple(lr_decay_epochs)),
            validation=_validation(val_shots, 5, 15, val_tasks), batch_size=batch_size,
            augment=AugmentSettings(data_aug, hflip), rotate_aug=rotate_aug, seed=seed, report=_report(run_dir))
    return _train_in(run_dir, device, lambda folder: train_supervised(
        model, train, item_images, label_sets, val, data.mean, data.std, settings, device, folder, log or _quiet,
        model_metadata("learn_labeler" if labels is not None else "sup_baseline", data))[0])


@dataclass(frozen=True)
class ShotResult:
    """Test accuracy (%) at one shot count: mean, half-width of the 95 % CI, tasks, and per sub-data set."""

    shots: int
    acc: float
    ci: float
    n_tasks: int
    per_group: dict[str, tuple[float, float]] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.shots}-shot: {self.acc:.2f} ± {self.ci:.2f} % ({self.n_tasks} tasks)"


def evaluate(
    model: torch.nn.Module,
    dataset: Dataset | str,
    split: str = "test",
    shots: Sequence[int] = (1, 5),
    *,
    n_ways: int = 5,
    n_queries: int = 15,
    n_tasks: int = 1000,
    protocol: EvalProtocol | None = None,
    device: DeviceLike = None,
    compute: ComputeSettings | None = None,
) -> list[ShotResult]:
    """Few-shot accuracy on seeded ``n_ways``-way tasks of ``split``, one :class:`ShotResult` per shot count.

    The default protocol is the reference's: L2-normalised features, logistic regression with C = 1.
    Task i is drawn from seed i, so every model sees the same tasks. ``compute`` sets the feature pass's
    precision and memory layout (default: auto, as ``mela meta-eval``); the heads always solve in float64.
    """
    data, device = _dataset(dataset), _device(device)
    shapes = [TaskShape(n_ways, int(k), n_queries) for k in shots]
    resolved = (compute or ComputeSettings()).resolve(device, backbone_of(model))
    results = evaluate_model(model.to(device), data.split(split), shapes, n_tasks, protocol or EvalProtocol(),
                             data.mean, data.std, device, resolved)
    return [ShotResult(shape.n_shots, r.overall.acc, r.overall.ci, r.overall.n_tasks,
                       {g: (a.acc, a.ci) for g, a in r.per_group.items()})
            for shape, r in zip(shapes, results, strict=True)]


@dataclass(frozen=True)
class TasksResult:
    """Accuracy (%) inside held-out tasks: mean, 95 % CI half-width, tasks scored, and what was not scored."""

    acc: float
    ci: float
    n_tasks: int
    unscored_classes: int
    unscored_tasks: int

    def __str__(self) -> str:
        return f"held-out tasks: {self.acc:.2f} ± {self.ci:.2f} % ({self.n_tasks} tasks)"


def evaluate_tasks(model: torch.nn.Module, dataset: TaskDataset, part: str = "test", *, shots: int | None = None,
                   protocol: EvalProtocol | None = None, seed: int = 0, device: DeviceLike = None) -> TasksResult:
    """Accuracy inside each task of ``part`` (held-out ``test`` by default), with the task's own images.

    Each class's images are split into support (``shots`` of them, at most all but one; None: half) and query;
    single-image classes stay in the support and are not scored.
    """
    device = _device(device)
    result = evaluate_collection(model.to(device), dataset.tasks(part), [shots], protocol or EvalProtocol(),
                                 dataset.mean, dataset.std, device, seed=seed)[0]
    return TasksResult(result.accuracy.acc, result.accuracy.ci, result.accuracy.n_tasks, result.unscored_classes,
                       result.unscored_tasks)


@dataclass(frozen=True)
class PipelineResult:
    """What ``mela pipeline`` reports: accuracy rows per model and shot count, the labeler summary, where."""

    rows: list[dict]
    labeler: dict
    path: Path
    seconds: float

    def table(self) -> str:
        from mela.steps.pipeline import results_table

        return results_table(self.rows)

    def accuracy(self, model: str, shots: int | str) -> tuple[float, float]:
        """(mean, 95 % CI half-width) of ``model`` (meta_repr, mela, mela_finetune, oracle) at ``shots``, or in
        the column ``shots`` names (``"held-out tasks"``, ``"glyphs 5-shot"``)."""
        from mela.reporting.columns import row_column

        for row in self.rows:
            plain = not row.get("column") and row["shots"] == shots
            if row["model"] == model and (plain or row_column(row) == shots):
                return row["acc"], row["ci"]
        raise MelaError(f"no result for model {model} at {shots}")


def _override_value(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return "null" if value is None else str(value)


def run_pipeline(overrides: Sequence[str] | dict = (), *, config_name: str = "pipeline",
                 workspace: str | None = None) -> PipelineResult:
    """``mela pipeline`` from Python: ``overrides`` as on the command line (``["dataset=glyphs"]``) or a dict.

    Runs go to the workspace (``workspace`` or ``$WORKSPACE``) as with the CLI, so a rerun with the same
    ``run_name`` resumes.
    """
    from mela.config import compose_config
    from mela.steps import pipeline

    if isinstance(overrides, dict):
        overrides = [f"{key}={_override_value(value)}" for key, value in overrides.items()]
    overrides = list(overrides) + ([f"workspace={workspace}"] if workspace else [])
    if not any(o.lstrip("+").startswith("progress=") for o in overrides):
        overrides.append("progress=false")  # from Python, no bars unless asked for (progress=auto or true)
    results = pipeline.run(pipeline.read_settings(compose_config(config_name, overrides)))
    return PipelineResult(results["rows"], results["labeler"], Path(results["path"]), results["seconds"])
