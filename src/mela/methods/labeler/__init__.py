"""Global label inference: cluster the per-task class means ("keys"), then label every task.

Each task's keys belong to distinct global classes (cannot-link); the labeler keeps centroids, matches each
task's keys to distinct centroids, spawns, merges and prunes them, and repeats until their number is stable.
The method, its modes, noise model, diagnostics, ragged piles and scale are described in docs/labeler.md.
Modules: config (settings), constants, modes (registered modes), keys (ragged containers), distances, noise
(key spread), assignment (per-task matching, pruning), labelling, merge, fit, diagnostics, oversplit (classes
that look split), scoring. The scikit-learn style front, :class:`mela.methods.global_labels.GlobalLabeler`,
sits above this package.
"""

from mela.methods.labeler.assignment import (
    cheapest_distinct,
    colliding_tasks,
    debiased_cost,
    matched_distinct,
    nearest_distinct,
    prune_threshold,
)
from mela.methods.labeler.config import LabelerConfig
from mela.methods.labeler.diagnostics import key_diagnostics, key_distances, reliability_warning
from mela.methods.labeler.distances import (
    CentroidTable,
    different_class_sq_distances,
    nearest_centroids,
    paired_sq_distances,
)
from mela.methods.labeler.fit import Clustering, cluster_features, fit_centroids, spawn_threshold
from mela.methods.labeler.keys import RaggedFeatures, TaskKeys, as_task_keys, task_keys, tasks_kept
from mela.methods.labeler.labelling import label_tasks
from mela.methods.labeler.merge import (
    CentroidPairs,
    cooccurrence,
    cooccurrence_pairs,
    different_class_chance,
    member_means,
    merge_candidates,
    merge_indistinguishable,
    merge_threshold,
)
from mela.methods.labeler.modes import LabelerMode, get_mode, register_mode
from mela.methods.labeler.noise import (
    KeySpread,
    cluster_spread,
    effective_dimension,
    key_noise,
    key_spread,
    same_class_key_distance,
    shared_noise,
)
from mela.methods.labeler.oversplit import oversplit_check, oversplit_warning
from mela.methods.labeler.scoring import clustering_report, purity, with_singletons

__all__ = [
    "CentroidPairs", "CentroidTable", "Clustering", "KeySpread", "LabelerConfig", "LabelerMode", "RaggedFeatures",
    "TaskKeys", "as_task_keys", "cheapest_distinct", "cluster_features", "cluster_spread", "clustering_report",
    "colliding_tasks", "cooccurrence", "cooccurrence_pairs", "debiased_cost", "different_class_chance",
    "different_class_sq_distances", "effective_dimension", "fit_centroids", "get_mode", "key_diagnostics",
    "key_distances", "key_noise", "key_spread", "label_tasks", "matched_distinct", "member_means",
    "merge_candidates", "merge_indistinguishable", "merge_threshold", "nearest_centroids", "nearest_distinct",
    "oversplit_check", "oversplit_warning", "paired_sq_distances", "prune_threshold", "purity", "register_mode",
    "reliability_warning", "same_class_key_distance", "shared_noise", "spawn_threshold", "task_keys", "tasks_kept",
    "with_singletons",
]
