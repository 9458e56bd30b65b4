"""From a task pile's features to global labels: the labeler's whole procedure, as one call.

:mod:`mela.methods.labeler` holds the clustering math; this module strings it
together (keys, same-class distance, centroids, one-to-one labelling) and turns
the result into labelled images for pre-training.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score

from mela.data.base import ImageSplit
from mela.errors import MelaError
from mela.methods.evaluator import Extract, extract_features
from mela.methods.labeler import (
    LabelerConfig,
    RaggedFeatures,
    TaskKeys,
    as_task_keys,
    cluster_features,
    clustering_report,
    get_mode,
    key_diagnostics,
    key_distances,
    key_spread,
    label_tasks,
    oversplit_check,
    oversplit_warning,
    task_keys,
    tasks_kept,
)

# The count check clusters again with this fraction of K (at least the widest task's ways).
COUNT_CHECK_K_FRACTION = 0.75
# Above this slope (clusters gained per centroid of K) the number of clusters is K's, not the data's.
MAX_DATA_DRIVEN_COUNT_SLOPE = 0.5
# Below this agreement (ARI) between the clusterings from K and the lower K, the labels are not the data's: on
# the sweep's 108 piles it flags all 58 with a true ARI below 0.5, 10 between 0.5 and 0.8, none above.
MIN_RELIABLE_AGREEMENT = 0.6


def _check_finite(features: np.ndarray | RaggedFeatures) -> None:
    """One line instead of a failure deep inside the matching when a feature is NaN or infinite."""
    items = features.items if isinstance(features, RaggedFeatures) else np.asarray(features)
    finite = np.isfinite(items).all(axis=-1)
    if not finite.all():
        raise MelaError(f"{int((~finite).sum())} of {finite.size} image features are NaN or infinite: the model "
                        "that computed them diverged or was given broken images; retrain or check the inputs")


def _n_labels(assigned: np.ndarray) -> int:
    """Distinct labels among the labelled task classes (-1: dropped)."""
    return len(np.unique(assigned[assigned >= 0]))


@dataclass(frozen=True)
class GlobalLabels:
    """Inferred global classes of a task pile.

    Attributes:
        centroids: (K, d) one centroid per global class found.
        assigned: (T, n_ways) centroid index of each task class; -1 for a task the labeler dropped
            (``labeler=reference`` only). For a ragged pile: flat, one entry per task class, in the pile's order.
        passes: what each clustering pass did (spawned, pruned, merged, ...); empty with given centroids.
        diagnostics: label-free reliability of the labels (``methods.labeler.key_diagnostics``): same- vs
            different-class key distance, cannot-link violations, ``count_check`` (:func:`count_sensitivity`,
            improved mode), ``oversplit`` (``methods.labeler.oversplit_check``: classes that look split) and
            ``warning`` (a sentence or None).
        task_offsets: (T + 1,) for a ragged pile, task t's classes being
            ``assigned[task_offsets[t]:task_offsets[t + 1]]``; None for a fixed-shape pile.
        key_distances: distance of each task class's key to its centroid, shaped like ``assigned`` (NaN where
            dropped): a confidence, small is sure (compare it with ``diagnostics["same_class_key_distance"]``).
    """

    centroids: np.ndarray
    assigned: np.ndarray
    passes: list[dict] = field(default_factory=list)
    diagnostics: dict = field(default_factory=dict)
    task_offsets: np.ndarray | None = None
    key_distances: np.ndarray | None = None

    @property
    def warning(self) -> str | None:
        """Why the inferred labels may be unreliable, or None."""
        return self.diagnostics.get("warning")

    @property
    def n_clusters(self) -> int:
        """Global classes that label at least one task class."""
        return _n_labels(self.assigned)

    @property
    def ragged(self) -> bool:
        return self.task_offsets is not None

    @property
    def kept_tasks(self) -> np.ndarray:
        """(T,) True for the tasks whose classes are labelled (all of them, except in ``labeler=reference``)."""
        return tasks_kept(self.assigned, self.task_offsets)

    @property
    def class_labels(self) -> np.ndarray:
        """Flat (task classes,) global class of each task class renumbered 0..n_clusters-1, -1 where dropped."""
        flat = self.assigned.reshape(-1)
        out = np.full(len(flat), -1, dtype=np.int64)
        kept = flat >= 0
        out[kept] = np.unique(flat[kept], return_inverse=True)[1]
        return out

    def item_labels(self, class_offsets: np.ndarray) -> np.ndarray:
        """(items,) label of each item of a ragged pile (class k owns items ``class_offsets[k]:class_offsets[k + 1]``),
        renumbered as :attr:`class_labels`; -1 for the items of dropped tasks."""
        labels = self.class_labels
        sizes = np.diff(np.asarray(class_offsets))
        if len(sizes) != len(labels):
            raise MelaError(f"class_offsets describe {len(sizes)} classes but the labels cover {len(labels)}; "
                            "pass the class offsets of the pile the labels were inferred from")
        return np.repeat(labels, sizes)

    def labelled_items(self, tasks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Items of the kept tasks and their inferred labels, renumbered 0..n_clusters-1.

        ``tasks`` is the (T, n_ways, per_class) item pile the labels were inferred from.
        """
        if self.ragged:
            raise MelaError("labelled_items takes a fixed-shape pile; for a ragged pile use item_labels(class_offsets)")
        kept = (self.assigned >= 0).all(axis=1)
        items = tasks[kept].reshape(-1)
        clusters = np.repeat(self.assigned[kept], tasks.shape[2], axis=1).reshape(-1)
        _, labels = np.unique(clusters, return_inverse=True)
        return items, labels

    def report(self, true_classes: np.ndarray | None = None) -> dict:
        """Counts, and with ``true_classes`` (T, n_ways), or flat (task classes,), the agreement with them
        (see ``clustering_report``)."""
        kept = self.kept_tasks
        base = {"centroids": len(self.centroids), "clusters": self.n_clusters,
                "tasks_kept": int(kept.sum()), "tasks_total": int(len(kept))}
        if true_classes is not None:
            true_classes = np.asarray(true_classes)
            if self.ragged or true_classes.ndim == 1:
                base.update(clustering_report(self.assigned.reshape(-1), true_classes.reshape(-1),
                                              self._offsets()))
            else:
                base.update(clustering_report(self.assigned, true_classes))
        return {**base, "passes": self.passes, "diagnostics": self.diagnostics,
                "same_class_key_distance": self.diagnostics.get("same_class_key_distance"),
                "warning": self.warning}

    def _offsets(self) -> np.ndarray:
        if self.task_offsets is not None:
            return self.task_offsets
        t, n = self.assigned.shape
        return np.arange(t + 1, dtype=np.int64) * n


def infer_global_labels(
    features: np.ndarray | RaggedFeatures, config: LabelerConfig = LabelerConfig(),
    centroids: np.ndarray | None = None, device: torch.device | None = None,
) -> GlobalLabels:
    """Cluster a pile's classes into global classes and label every task.

    Args:
        features: (T, n_ways, m, d) features of the m images of each local class of each task, or a
            :class:`RaggedFeatures` (tasks of any ways, classes of any sizes; then ``assigned`` is flat).
        config: the clustering settings.
        centroids: reuse these (K, d) centroids instead of fitting new ones.
        device: where the key-centroid distances are computed (the training device; on a GPU each pass's
            distances are computed there, in chunks); ``None`` or a CPU: NumPy.
    """
    device = None if device is None or device.type == "cpu" else device
    _check_finite(features)
    keys = task_keys(features)
    spread = None
    passes: list[dict] = []
    fitted = centroids is None
    if fitted:
        clustering = cluster_features(features, config, keys, device)
        centroids, passes, spread = clustering.centroids, clustering.passes, clustering.spread
    if spread is None:
        spread = key_spread(features)
    centroids = np.asarray(centroids)
    assigned = label_tasks(keys, centroids, config.mode, device=device)
    offsets = keys.offsets if isinstance(keys, TaskKeys) else None
    diagnostics = key_diagnostics(keys, centroids, spread, device=device)
    if fitted and get_mode(config.mode).count_check and config.count_check:
        check = count_sensitivity(features, keys, config, assigned, device)
        if check is not None:
            diagnostics["count_check"] = check
            warnings = [w for w in (diagnostics["warning"], *count_warnings(check)) if w]
            diagnostics["warning"] = "; ".join(warnings) or None
    # Reads the labels only: global classes that never share a task yet lie too close to be different classes.
    diagnostics["oversplit"] = oversplit_check(keys, assigned)
    diagnostics["warning"] = "; ".join(w for w in (diagnostics["warning"], oversplit_warning(diagnostics["oversplit"]))
                                       if w) or None
    return GlobalLabels(centroids, assigned, passes, diagnostics, offsets, key_distances(keys, centroids, assigned))


def count_sensitivity(
    features: np.ndarray | RaggedFeatures, keys: np.ndarray | TaskKeys, config: LabelerConfig, assigned: np.ndarray,
    device: torch.device | None = None,
) -> dict | None:
    """Cluster again with a smaller K and compare: did the count come from the data, and do the labels hold?

    Where the keys settle the classes (the spawn and merge tests are decisive), the count barely moves
    with K; where they cannot (keys of one image whose classes overlap at that resolution), the labeler
    keeps about as many clusters as it started with, and the count is a setting, not a finding.
    ``slope``: clusters gained per initial centroid between the two runs (0: the data's count, 1: K's).
    ``agreement``: the adjusted Rand index between the two runs' labels (``assigned``, from K, and the
    lower K's), a label-free stand-in for their agreement with the truth: labels the data determine do not
    depend on where the clustering started (on the 108 piles of ``benchmarks/labeler_sweep.py`` it tracks
    the true ARI with correlation 0.96). None when K cannot be lowered (at most the widest task's ways).
    """
    lower = max(as_task_keys(keys)[0].max_ways, round(COUNT_CHECK_K_FRACTION * config.K))
    if lower >= config.K:
        return None
    again = cluster_features(features, replace(config, K=lower), keys, device)
    relabelled = label_tasks(keys, again.centroids, config.mode, device=device)
    clusters, fewer = _n_labels(assigned), _n_labels(relabelled)
    return {"K": config.K, "clusters": clusters, "K_lower": lower, "clusters_lower": fewer,
            "slope": (clusters - fewer) / (config.K - lower),
            "agreement": float(adjusted_rand_score(np.ravel(assigned), np.ravel(relabelled)))}


def count_warnings(check: dict) -> list[str]:
    """Sentences for what :func:`count_sensitivity` found wrong: a count that follows K, labels that move."""
    out = []
    if check["slope"] > MAX_DATA_DRIVEN_COUNT_SLOPE:
        out.append(f"the number of clusters follows K ({check['clusters_lower']} with K={check['K_lower']}, "
                   f"{check['clusters']} with K={check['K']}): the keys do not settle how many classes the pile has, "
                   "so the count is a setting, not a finding; set K to your estimate of the number of classes (keys "
                   "that average more images per class, or a better trained representation, let the data decide)")
    if check["agreement"] < MIN_RELIABLE_AGREEMENT:
        out.append(f"the labels change with K (adjusted Rand index {check['agreement']:.2f} between the clusterings "
                   f"from K={check['K']} and K={check['K_lower']}; reliable above {MIN_RELIABLE_AGREEMENT}): the "
                   "keys do not determine the classes, expect many mixed or split clusters")
    return out


def pile_features(
    model: torch.nn.Module, split: ImageSplit, tasks: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...],
    device: torch.device, extract: Extract = extract_features,
) -> np.ndarray:
    """(T, n_ways, per_class, d) features of the pile's images (``extract``: without augmentation by default;
    :mod:`mela.methods.label_views` passes learn_labeler's views).

    Only the images the pile uses go through the model, each once.
    """
    rows = split.item_images()[tasks]
    used, inverse = np.unique(rows, return_inverse=True)
    features = extract(model, split.images[used], mean, std, device).numpy()
    return features[inverse.reshape(rows.shape)]


class GlobalLabeler:
    """Infer global classes from a pile of task features (the labeler's functions, wrapped).

    Keyword arguments are :class:`LabelerConfig`'s (``K``, ``mode``, ``std_factor``, ...); ``device``: where the
    distances are computed (None or a CPU: NumPy). After :meth:`fit`: ``centroids_`` (K, d), ``passes_`` (what
    each pass did), ``diagnostics_`` (label-free reliability) and ``assigned_`` (the fitted pile's labels).
    """

    def __init__(self, device: torch.device | None = None, **settings) -> None:
        self.config = LabelerConfig(**settings)
        self.device = device

    def fit(self, features: np.ndarray | RaggedFeatures) -> GlobalLabeler:
        """Cluster the pile's keys (``infer_global_labels``) and keep the centroids; returns self."""
        labels = infer_global_labels(features, self.config, device=self.device)
        self.centroids_, self.passes_, self.diagnostics_ = labels.centroids, labels.passes, labels.diagnostics
        self.assigned_ = labels.assigned
        return self

    def predict(self, features: np.ndarray | RaggedFeatures) -> np.ndarray:
        """Global class of each task class (``label_tasks`` with the fitted centroids): (T, n_ways) or flat."""
        device = None if self.device is None or self.device.type == "cpu" else self.device
        return label_tasks(task_keys(features), self.centroids_, self.config.mode, device=device)
