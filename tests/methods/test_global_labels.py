"""From features to global labels in one call, on fixed-shape and ragged piles."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from mela.errors import MelaError
from mela.methods.global_labels import GlobalLabeler, GlobalLabels, infer_global_labels
from mela.methods.labeler import LabelerConfig, RaggedFeatures
from tests.conftest import ragged_pile, recurring_tasks


def _fixed_pile(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(60, 4, 3, 8) features of 15 well separated classes and their (60, 4) true classes."""
    rng = np.random.default_rng(seed)
    means = 6.0 * rng.normal(size=(15, 8)) / math.sqrt(8)
    true = np.stack([rng.choice(15, 4, replace=False) for _ in range(60)])
    return means[true][:, :, None] + rng.normal(size=(60, 4, 3, 8)) / math.sqrt(8), true


def test_ragged_pile_gets_flat_labels_with_task_offsets_and_recovers_its_classes() -> None:
    features, true = ragged_pile(1)
    labels = infer_global_labels(features, LabelerConfig(K=40))
    assert labels.ragged and labels.assigned.shape == (features.n_classes,)
    np.testing.assert_array_equal(labels.task_offsets, features.task_offsets)
    report = labels.report(true)
    assert report["ari"] == pytest.approx(adjusted_rand_score(true, labels.assigned), abs=1e-12)
    assert report["ari"] >= 0.95 and report["clusters"] == 15
    assert report["tasks_kept"] == report["tasks_total"] == features.n_tasks
    assert labels.warning is None


def test_key_distances_are_each_class_means_distance_to_its_centroid() -> None:
    features, _ = ragged_pile(2)
    labels = infer_global_labels(features, LabelerConfig(K=40))
    keys = np.stack([features.items[lo:hi].mean(axis=0)
                     for lo, hi in zip(features.class_offsets[:-1], features.class_offsets[1:], strict=True)])
    expected = np.linalg.norm(keys - labels.centroids[labels.assigned], axis=1)
    np.testing.assert_allclose(labels.key_distances, expected, rtol=1e-10)
    # Keys average 1-4 images of unit trace: well within a few same-class key distances of their centroid.
    assert labels.key_distances.max() < 3 * labels.diagnostics["same_class_key_distance"]


def test_fixed_and_ragged_forms_of_one_pile_give_identical_global_labels() -> None:
    features, true = _fixed_pile(3)
    for mode, K in (("improved", 20), ("reference", 16)):
        fixed = infer_global_labels(features, LabelerConfig(K=K, mode=mode))
        ragged = infer_global_labels(RaggedFeatures.from_array(features), LabelerConfig(K=K, mode=mode))
        np.testing.assert_array_equal(fixed.centroids, ragged.centroids)
        np.testing.assert_array_equal(fixed.assigned.ravel(), ragged.assigned)
        np.testing.assert_array_equal(fixed.key_distances.ravel(), ragged.key_distances)
        assert fixed.key_distances.shape == fixed.assigned.shape and fixed.task_offsets is None
        assert fixed.passes == ragged.passes
        assert fixed.report(true) == ragged.report(true.ravel()) == fixed.report(true.ravel())


def test_reference_mode_report_counts_the_ragged_tasks_it_dropped_and_nan_distances_there() -> None:
    assigned = np.array([0, 1, -1, -1, -1, 2, 0])
    labels = GlobalLabels(np.zeros((3, 2)), assigned, task_offsets=np.array([0, 2, 5, 7]),
                          key_distances=np.where(assigned >= 0, 0.5, np.nan))
    report = labels.report(np.array([5, 6, 7, 8, 9, 7, 5]))
    assert (report["tasks_kept"], report["tasks_total"]) == (2, 3)
    assert report["clusters_with_unassigned"] == 6  # 3 clusters + the dropped task's 3 classes
    np.testing.assert_array_equal(labels.class_labels, [0, 1, -1, -1, -1, 2, 0])
    np.testing.assert_array_equal(labels.item_labels(np.array([0, 2, 3, 4, 5, 6, 8, 9])),
                                  [0, 0, 1, -1, -1, -1, 2, 2, 0])


def test_labelled_items_refuses_a_ragged_pile_and_item_labels_a_mismatched_one_with_one_line() -> None:
    labels = GlobalLabels(np.zeros((2, 2)), np.array([0, 1, 1, 0]), task_offsets=np.array([0, 2, 4]))
    with pytest.raises(MelaError, match="use item_labels"):
        labels.labelled_items(np.zeros((2, 2, 1), dtype=int))
    with pytest.raises(MelaError, match="describe 2 classes but the labels cover 4"):
        labels.item_labels(np.array([0, 1, 2]))


def _one_image_pile(seed: int, n_classes: int, recurrence: int, dim: int, separation: float
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(T, 5, 1, dim) one-image keys of overlapping classes (class means `separation` apart relative to the
    image noise), each class recurring `recurrence` times in 5-way tasks of distinct classes."""
    rng = np.random.default_rng(seed)
    means = separation * rng.normal(size=(n_classes, dim)) / math.sqrt(dim)
    true = recurring_tasks(rng, n_classes, recurrence)
    return means[true][:, :, None] + rng.normal(size=(*true.shape, 1, dim)) / math.sqrt(dim), true


@pytest.mark.parametrize("make", [lambda: _fixed_pile(4), lambda: ragged_pile(5)], ids=["fixed", "ragged"])
def test_count_check_finds_the_same_count_at_a_lower_k_when_the_keys_separate_the_classes(make) -> None:
    features, true = make()
    labels = infer_global_labels(features, LabelerConfig(K=40))
    check = labels.diagnostics["count_check"]
    assert check == {"K": 40, "clusters": 15, "K_lower": 30, "clusters_lower": 15, "slope": 0.0, "agreement": 1.0}
    assert labels.warning is None


@pytest.mark.parametrize("seed, n_classes, recurrence, dim, separation",
                         [(0, 60, 6, 16, 0.0), (1, 70, 8, 32, 0.3), (2, 50, 6, 8, 0.5)])
def test_count_check_warns_when_one_image_keys_of_overlapping_classes_keep_about_k_clusters(
        seed: int, n_classes: int, recurrence: int, dim: int, separation: float) -> None:
    features, _ = _one_image_pile(seed, n_classes, recurrence, dim, separation)
    labels = infer_global_labels(features, LabelerConfig(K=80))
    check = labels.diagnostics["count_check"]
    # The lower run is what a user gets by asking for K=60 directly.
    lower = infer_global_labels(features, LabelerConfig(K=60, count_check=False))
    assert (check["K_lower"], check["clusters_lower"]) == (60, lower.n_clusters)
    assert check["clusters"] == labels.n_clusters
    assert check["slope"] == pytest.approx((labels.n_clusters - lower.n_clusters) / 20)
    assert check["slope"] > 0.5
    assert f"follows K ({lower.n_clusters} with K=60, {labels.n_clusters} with K=80)" in labels.warning
    assert "count_check" not in lower.diagnostics
    # Overlapping one-image keys: the two labellings barely agree, and the warning says so.
    assert check["agreement"] == pytest.approx(adjusted_rand_score(labels.assigned.ravel(), lower.assigned.ravel()))
    assert check["agreement"] < 0.6 and "the labels change with K (adjusted Rand index" in labels.warning


def test_agreement_between_the_two_clusterings_tracks_the_true_ari_as_classes_overlap_more() -> None:
    agreements, aris = [], []
    for separation in (4.0, 2.0, 1.0, 0.5, 0.0):
        features, true = _one_image_pile(10, 80, 6, 32, separation)
        labels = infer_global_labels(features, LabelerConfig(K=100))
        agreements.append(labels.diagnostics["count_check"]["agreement"])
        aris.append(labels.report(true)["ari"])
    assert agreements[0] > 0.9 and aris[0] > 0.9
    assert agreements[-1] < 0.3 and aris[-1] < 0.1
    assert np.corrcoef(agreements, aris)[0, 1] > 0.9


def test_count_check_is_skipped_for_reference_mode_given_centroids_and_a_k_that_cannot_go_lower() -> None:
    features, _ = _fixed_pile(6)
    assert "count_check" not in infer_global_labels(features, LabelerConfig(K=16, mode="reference")).diagnostics
    fitted = infer_global_labels(features, LabelerConfig(K=40))
    assert "count_check" not in infer_global_labels(features, LabelerConfig(K=40), fitted.centroids).diagnostics
    assert "count_check" not in infer_global_labels(features, LabelerConfig(K=4)).diagnostics  # 4-way tasks need 4


def test_features_with_nan_or_infinity_get_one_line_naming_how_many() -> None:
    features, _ = _fixed_pile(9)
    features[3, 1, 2, 0] = np.nan
    with pytest.raises(MelaError, match="1 of 720 image features are NaN or infinite"):
        infer_global_labels(features, LabelerConfig(K=40))
    ragged, _ = ragged_pile(9)
    ragged.items[[0, 5]] = np.inf
    with pytest.raises(MelaError, match=f"2 of {len(ragged.items)} image features"):
        infer_global_labels(ragged, LabelerConfig(K=40))


def test_global_labeler_estimator_gives_the_results_of_infer_global_labels() -> None:
    features, _ = ragged_pile(11)
    labels = infer_global_labels(features, LabelerConfig(K=40))
    estimator = GlobalLabeler(K=40).fit(features)
    assert estimator is not None and estimator.passes_ == labels.passes
    np.testing.assert_array_equal(estimator.centroids_, labels.centroids)
    np.testing.assert_array_equal(estimator.assigned_, labels.assigned)
    np.testing.assert_array_equal(estimator.predict(features), labels.assigned)
    assert estimator.diagnostics_["warning"] == labels.diagnostics["warning"]
