"""Few-shot evaluation: features once, then many seeded tasks through one head."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import stats

from mela import distributed
from mela.compute import FP32, Compute
from mela.data.augment import normalize
from mela.data.base import ImageSplit
from mela.data.samplers import TaskShape, evaluation_tasks, split_support_query
from mela.data.tasks import TaskCollection, support_query
from mela.device import pixel_tensor
from mela.methods.heads import FewShotHead, make_head


@dataclass(frozen=True)
class EvalProtocol:
    """How test-time accuracy is measured: which head, its options, and feature normalisation.

    The reference's protocol is the default: L2-normalised features, multinomial
    logistic regression with C = 1 and an intercept.
    """

    head: str = "logistic"
    C: float = 1.0
    use_bias: bool = True
    lam: float = 1e-3
    is_norm: bool = True
    balanced: bool = False

    def head_factory(self) -> Callable[[], FewShotHead]:
        make_head(self.head)  # an unknown name fails here, before any feature is computed
        return lambda: make_head(self.head, C=self.C, use_bias=self.use_bias, lam=self.lam, balanced=self.balanced)


@dataclass(frozen=True)
class Accuracy:
    """Mean accuracy (%) over tasks and the half-width of its 95% confidence interval."""

    acc: float
    ci: float
    n_tasks: int


@dataclass(frozen=True)
class EvalResult:
    """Overall accuracy plus one entry per sub-data set (group).

    ``per_task``: the accuracy (%) of every task, groups one after another (its mean is ``overall.acc``);
    ``tasks_digest``: a hash of the tasks' items, equal exactly when two evaluations drew the same tasks.
    """

    overall: Accuracy
    per_group: dict[str, Accuracy] = field(default_factory=dict)
    per_task: np.ndarray = field(default_factory=lambda: np.zeros(0), compare=False)
    tasks_digest: str = ""


def mean_confidence_interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Mean and Student-t half-width of the ``confidence`` interval."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float(values.mean()) if len(values) else float("nan"), float("nan")
    half = stats.t.ppf(0.5 + confidence / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean()), float(half)


@torch.no_grad()
def extract_features(
    model: torch.nn.Module,
    images: np.ndarray,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    device: torch.device,
    batch_size: int = 256,
    compute: Compute = FP32,
) -> torch.Tensor:
    """Features of every image (N, H, W, C uint8), in eval mode, returned on the CPU as float32.

    ``compute`` runs the model (autocast, memory layout: the model is put in its layout); the features
    leave it as float32, so the heads that follow solve in float32 / float64 whatever the precision.
    """
    was_training = model.training
    model.eval()
    compute.prepare(model)
    out = map_batches(images, batch_size, lambda _start, batch: compute.forward(
        model, normalize(pixel_tensor(batch).to(device), mean, std)))
    model.train(was_training)
    return out


# What computes (N, d) features of (N, H, W, C) uint8 images: extract_features's signature.
Extract = Callable[[torch.nn.Module, np.ndarray, tuple, tuple, torch.device], torch.Tensor]


def map_batches(images: np.ndarray, batch_size: int,
                features_of: Callable[[int, np.ndarray], torch.Tensor]) -> torch.Tensor:
    """``features_of(start, batch)`` on each ``batch_size`` batch of ``images``, concatenated on the CPU.

    Under torchrun each rank computes every world_size-th batch (the same batches as one process, so the same
    numbers) and the batches are gathered back in order on every rank.
    """
    starts = list(range(0, len(images), batch_size))
    out = [features_of(start, images[start:start + batch_size]).cpu() for start in distributed.shard(starts)]
    if distributed.is_distributed():
        out = distributed.unshard(distributed.all_gather_object(out), len(starts))
    return torch.cat(out) if out else torch.zeros(0)


def task_accuracies(
    features: torch.Tensor,
    tasks: np.ndarray,
    n_shots: int,
    head_factory: Callable[[], FewShotHead],
    chunk: int = 500,
) -> np.ndarray:
    """Accuracy of the head on each task of ``tasks`` (T, n_ways, per_class) of item features."""
    n_ways = tasks.shape[1]
    support, support_labels, query, query_labels = split_support_query(tasks, n_shots)
    starts = list(range(0, len(tasks), chunk))
    accs = []
    # Under torchrun each rank fits every world_size-th chunk: the heads solve a chunk's tasks together, so
    # the same chunks as one process give exactly its accuracies; the chunks are gathered back in order.
    for start in distributed.shard(starts):
        sl = slice(start, start + chunk)
        head = head_factory().fit(features[support[sl]], torch.from_numpy(np.array(support_labels[sl])),
                                  n_ways)
        predicted = head.predict(features[query[sl]]).cpu().numpy()
        accs.append((predicted == query_labels[sl]).mean(axis=1))
    if distributed.is_distributed():
        accs = distributed.unshard(distributed.all_gather_object(accs), len(starts))
    return np.concatenate(accs) if accs else np.zeros(0)


def evaluate_features(
    item_features: torch.Tensor,
    split: ImageSplit,
    shape: TaskShape,
    n_tasks: int,
    head_factory: Callable[[], FewShotHead],
    is_norm: bool = True,
) -> EvalResult:
    """Evaluate on ``n_tasks`` seeded tasks per group; item_features is (M, d), one row per item."""
    features = item_features.double()
    if is_norm:
        features = torch.nn.functional.normalize(features, dim=-1)
    per_group, all_accs = {}, []
    digest = hashlib.sha1(repr((shape.n_ways, shape.n_shots, shape.n_queries)).encode())
    for name, tasks in evaluation_tasks(split, shape, n_tasks):
        accs = task_accuracies(features, tasks, shape.n_shots, head_factory) * 100
        per_group[name] = Accuracy(*mean_confidence_interval(accs), len(accs))
        all_accs.append(accs)
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(tasks, dtype=np.int64).tobytes())
        digest.update(np.ascontiguousarray(split.labels[tasks.reshape(-1)], dtype=np.int64).tobytes())
    per_task = np.concatenate(all_accs)
    overall = Accuracy(*mean_confidence_interval(per_task), len(per_task))
    return EvalResult(overall=overall, per_group=per_group, per_task=per_task, tasks_digest=digest.hexdigest()[:16])


def evaluate_model(
    model: torch.nn.Module,
    split: ImageSplit,
    shapes: list[TaskShape],
    n_tasks: int,
    protocol: EvalProtocol,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    device: torch.device,
    compute: Compute = FP32,
) -> list[EvalResult]:
    """Extract the split's features with ``model`` once (under ``compute``), then evaluate every task shape."""
    image_features = extract_features(model, split.images, mean, std, device, compute=compute)
    item_features = image_features[split.item_images()]
    return [evaluate_features(item_features, split, shape, n_tasks, protocol.head_factory(), protocol.is_norm)
            for shape in shapes]


@dataclass(frozen=True)
class CollectionResult:
    """Accuracy inside the tasks of a collection, and what could not be scored.

    ``unscored_classes``: classes of a single image (support only: there is no query image to score);
    ``unscored_tasks``: tasks with no class of two images, left out of the mean; ``per_task`` the accuracy (%) of
    each scored task, ``task_ids`` their indices in the collection (their mean is ``accuracy.acc``).
    """

    accuracy: Accuracy
    unscored_classes: int
    unscored_tasks: int
    per_task: np.ndarray = field(default_factory=lambda: np.zeros(0), compare=False)
    task_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64), compare=False)


def evaluate_collection_features(
    image_features: torch.Tensor,
    collection: TaskCollection,
    head_factory: Callable[[], FewShotHead],
    shots: int | None = None,
    is_norm: bool = True,
    seed: int = 0,
    max_tasks: int | None = None,
) -> CollectionResult:
    """Fit the head inside each task on its own support images and score it on its own queries.

    ``image_features`` is (N, d), one row per image of the collection. Each class's images are split into
    support (``shots`` of them, at most all but one; ``None``: half) and query by a generator seeded with
    (seed, task), so every model sees the same splits. Single-image classes stay in the support (the head
    must still tell them apart) and are not scored.
    """
    features = image_features.double()
    if is_norm:
        features = torch.nn.functional.normalize(features, dim=-1)
    n_tasks = collection.n_tasks if max_tasks is None else min(collection.n_tasks, max_tasks)
    outcomes = []  # per task: (accuracy or None if unscorable, unscored classes); each rank its share of tasks
    for task in distributed.shard(list(range(n_tasks))):
        episode = support_query(collection, task, np.random.default_rng([seed, task]), shots)
        if episode is None:
            outcomes.append((None, 0))
            continue
        head = head_factory().fit(features[torch.from_numpy(episode.support)][None],
                                  torch.from_numpy(episode.support_labels)[None], episode.n_ways)
        predicted = head.predict(features[torch.from_numpy(episode.query)][None])[0].cpu().numpy()
        outcomes.append((float((predicted == episode.query_labels).mean()) * 100, episode.unscored_classes))
    if distributed.is_distributed():
        outcomes = distributed.unshard(distributed.all_gather_object(outcomes), n_tasks)
    accs = np.array([acc for acc, _ in outcomes if acc is not None], dtype=float)
    task_ids = np.array([i for i, (acc, _) in enumerate(outcomes) if acc is not None], dtype=np.int64)
    unscored_tasks = sum(acc is None for acc, _ in outcomes)
    unscored_classes = sum(n for _, n in outcomes)
    return CollectionResult(Accuracy(*mean_confidence_interval(accs), len(accs)), unscored_classes,
                            unscored_tasks, accs, task_ids)


def evaluate_collection(
    model: torch.nn.Module,
    collection: TaskCollection,
    shots: list[int | None],
    protocol: EvalProtocol,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    device: torch.device,
    seed: int = 0,
    max_tasks: int | None = None,
    compute: Compute = FP32,
) -> list[CollectionResult]:
    """Features of the images the (first ``max_tasks``) tasks use, once, then :func:`evaluate_collection_features`
    per shot count."""
    n_tasks = collection.n_tasks if max_tasks is None else min(max_tasks, collection.n_tasks)
    collection = collection.subset(np.arange(n_tasks), compact=True)  # only the images these tasks use
    image_features = extract_features(model, collection.images, mean, std, device, compute=compute)
    head_factory = dataclasses.replace(protocol, balanced=True).head_factory()  # supports of unequal sizes
    return [evaluate_collection_features(image_features, collection, head_factory, k, protocol.is_norm, seed)
            for k in shots]
