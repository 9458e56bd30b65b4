"""The PNG plots: valid files of a plausible size, and the contingency ordering worked by hand."""

from __future__ import annotations

import struct

import numpy as np

from mela.reporting import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple[int, int]:
    """(width, height) from the PNG header, after checking the signature and the IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    assert data.rstrip(b"\x00")[-8:-4] == b"IEND"
    return struct.unpack(">II", data[16:24])


HISTORY = [
    {"epoch": 1, "lr": 0.05, "mse": 0.18, "hinge": 0.86, "loss": 1.05},
    {"epoch": 2, "lr": 0.005, "mse": 0.17, "hinge": 0.77, "loss": 0.96, "val_1shot": 55.0, "val_5shot": 66.25},
    {"epoch": 3, "lr": 0.005, "mse": 0.16, "hinge": 0.70, "loss": 0.90, "val_1shot": 57.0, "val_5shot": 70.0},
]


def test_curve_series_skip_epochs_without_a_value_and_read_csv_text():
    rows = [{"step": "x", "epoch": "1", "loss": "1.5", "val_1shot": ""}, {"epoch": "2", "loss": "1.25",
                                                                         "val_1shot": "40.5"}]
    assert plots.curve_series(rows) == {"loss": ([1.0, 2.0], [1.5, 1.25]), "val_1shot": ([2.0], [40.5])}


def test_learning_curves_are_a_png_of_the_figure_size(tmp_path):
    path = plots.learning_curves(HISTORY, tmp_path / "curves.png", title="learn_meta_repr tiny")
    assert path == tmp_path / "curves.png"
    assert png_size(path) == (1200, 340)


def test_labeler_plots_are_pngs(tmp_path):
    passes = [{"centroids_before": 40, "spawned": 3, "pruned": 25, "merged": 2, "centroids_after": 16},
              {"centroids_before": 16, "spawned": 0, "pruned": 1, "merged": 0, "centroids_after": 15}]
    assert png_size(plots.labeler_passes(passes, tmp_path / "passes.png")) == (600, 340)
    sizes = plots.cluster_sizes(np.array([[0, 1, 2], [2, 0, 5], [-1, -1, -1]]))
    assert sorted(sizes.tolist()) == [1, 1, 2, 2]  # cluster 3 and 4 never used, dropped task ignored
    assert png_size(plots.cluster_size_histogram(sizes, tmp_path / "sizes.png")) == (600, 340)


def test_the_contingency_puts_each_cluster_next_to_its_majority_class():
    # Class 7 is split over clusters 0 and 2; cluster 1 is class 3; cluster 5 mixes 3 and 7; one task dropped.
    assigned = np.array([[0, 1], [0, 1], [0, 1], [2, 1], [2, 5], [2, 5], [-1, -1]])
    true = np.array([[7, 3], [7, 3], [7, 3], [7, 3], [7, 3], [3, 7], [7, 3]])
    matrix, clusters, classes = plots.sorted_contingency(assigned, true)
    # By hand: counts (cluster, class): (0,7)=3, (1,3)=4, (2,7)=2, (2,3)=1, (5,3)=1, (5,7)=1.
    # Largest cluster per class: class 3 -> 4, class 7 -> 3, so class 3 comes first.
    assert classes.tolist() == [3, 7]
    assert clusters.tolist() == [1, 5, 0, 2]  # majority 3: cluster 1 (4) then 5 (tie -> class 3); then 0, 2
    assert matrix.tolist() == [[4, 0], [1, 1], [0, 3], [1, 2]]
    assert matrix.sum() == (assigned >= 0).sum()


def test_a_400_by_400_contingency_heatmap_draws_as_one_image(tmp_path):
    rng = np.random.default_rng(0)
    true = rng.integers(0, 400, size=(2000, 5))
    assigned = np.where(rng.random(true.shape) < 0.8, true, rng.integers(0, 400, size=true.shape))
    path = plots.contingency_heatmap(assigned, true, tmp_path / "contingency.png")
    assert png_size(path) == (600, 500)
    assert 10_000 < path.stat().st_size < 2_000_000


def test_pipeline_accuracy_is_a_png_for_four_models_and_two_shot_counts(tmp_path):
    rows = [{"model": m, "shots": k, "acc": 60.0 + 5 * i + 10 * (k == 5), "ci": 2.5}
            for i, m in enumerate(["meta_repr", "mela", "mela_finetune", "oracle"]) for k in (1, 5)]
    width, height = png_size(plots.pipeline_accuracy(rows, tmp_path / "sub" / "accuracy.png", title="glyphs"))
    assert width >= 500 and height == 360


def test_the_labeler_step_gets_its_three_plots_in_its_run_folder(tmp_path):
    assigned = np.array([[0, 1], [1, 2], [-1, -1]])
    true = np.array([[5, 6], [6, 7], [5, 6]])
    passes = [{"centroids_before": 6, "spawned": 0, "pruned": 3, "merged": 0, "centroids_after": 3}]
    written = plots.labeler_plots(tmp_path, passes, assigned, true)
    assert [p.name for p in written] == ["labeler_passes.png", "cluster_sizes.png", "contingency.png"]
    assert all(png_size(p)[0] == 600 for p in written)
    # Reused centroids (no passes) and unknown true classes: the size histogram only.
    assert [p.name for p in plots.labeler_plots(tmp_path / "b", [], assigned)] == ["cluster_sizes.png"]
