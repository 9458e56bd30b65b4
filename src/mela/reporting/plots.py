"""PNG plots of a run, the labeler and the pipeline (matplotlib, Agg backend: no display needed).

Every function takes plain data (lists, dicts, numpy arrays) and a path, writes one PNG and returns
the path, so steps, the pipeline and ``mela report`` can all draw from the files they already have.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter  # noqa: E402

DPI = 100


def _save(fig: Figure, path: Path, **margins: float) -> Path:
    """Fixed margins rather than ``tight_layout``, which draws the figure twice (half of a plot's time)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.subplots_adjust(**{"left": 0.1, "right": 0.97, "bottom": 0.14, "top": 0.9, **margins})
    fig.savefig(path, dpi=DPI, format="png")
    plt.close(fig)
    return path


def _number(value: object) -> float | None:
    """A float from a history value or a CSV cell; None for blanks and text."""
    if value is None or value == "":
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def curve_series(rows: Sequence[Mapping[str, object]]) -> dict[str, tuple[list[float], list[float]]]:
    """``{key: (epochs, values)}`` for every numeric key of history/metrics rows, skipping epochs without it
    (validation starts at the first lr decay)."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    for row in rows:
        epoch = _number(row.get("epoch"))
        if epoch is None:
            continue
        for key, raw in row.items():
            value = _number(raw)
            if key in ("epoch", "step") or value is None:
                continue
            xs, ys = series.setdefault(key, ([], []))
            xs.append(epoch)
            ys.append(value)
    return series


def learning_curves(rows: Sequence[Mapping[str, object]], path: Path, title: str = "") -> Path:
    """Losses (left), accuracies (middle) and learning rate (right) per epoch, from history.json or
    metrics.csv rows."""
    series = curve_series(rows)
    accuracy = {k: v for k, v in series.items() if k.startswith("val_") or "acc" in k}
    losses = {k: v for k, v in series.items() if k not in accuracy and k not in ("lr", "seconds")}
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, group, label in ((axes[0], losses, "loss"), (axes[1], accuracy, "accuracy (%)")):
        for key, (xs, ys) in group.items():
            ax.plot(xs, ys, marker="o", markersize=3, label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        if group:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    if "lr" in series:
        axes[2].plot(*series["lr"], "o-", markersize=3, color="tab:gray")
        axes[2].set_yscale("log")
        axes[2].yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))  # plain text, no mathtext
        axes[2].yaxis.set_minor_formatter(NullFormatter())
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[2].set_xlabel("epoch")
    axes[2].set_ylabel("learning rate")
    axes[2].grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path, left=0.06, right=0.98, wspace=0.3, top=0.88 if title else 0.95)


def labeler_passes(passes: Sequence[Mapping[str, float]], path: Path) -> Path:
    """Centroids before/after each clustering pass, with what was spawned, pruned and merged."""
    numbers = np.arange(1, len(passes) + 1)
    fig, ax = plt.subplots(figsize=(6, 3.4))
    width = 0.25
    for offset, key, color in ((-width, "spawned", "tab:green"), (0.0, "pruned", "tab:red"),
                               (width, "merged", "tab:purple")):
        ax.bar(numbers + offset, [float(p.get(key, 0)) for p in passes], width, label=key, color=color, alpha=0.6)
    ax.plot(numbers, [float(p.get("centroids_after", 0)) for p in passes], "k-o", label="centroids after pass")
    if passes:
        ax.plot([numbers[0] - 0.5], [float(passes[0].get("centroids_before", 0))], "ks", fillstyle="none",
                label="initial centroids")
    ax.set_xlabel("pass")
    ax.set_ylabel("centroids")
    ax.set_xticks(numbers)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def cluster_sizes(assigned: np.ndarray) -> np.ndarray:
    """Task classes per inferred cluster (``assigned``: cluster per task class, -1 where dropped)."""
    flat = np.asarray(assigned).ravel()
    flat = flat[flat >= 0]
    if not flat.size:
        return np.zeros(0, dtype=np.int64)
    counts = np.bincount(flat)
    return counts[counts > 0]


def cluster_size_histogram(sizes: np.ndarray, path: Path) -> Path:
    """How many clusters hold how many task classes: a few huge clusters mean merged classes."""
    sizes = np.asarray(sizes)
    fig, ax = plt.subplots(figsize=(6, 3.4))
    if sizes.size:
        bins = np.arange(sizes.min(), sizes.max() + 2) - 0.5 if sizes.max() - sizes.min() < 60 else 40
        ax.hist(sizes, bins=bins, color="tab:blue", alpha=0.8)
    ax.set_xlabel("task classes in the cluster")
    ax.set_ylabel("clusters")
    ax.set_title(f"{sizes.size} clusters", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def sorted_contingency(assigned: np.ndarray, true_classes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts of (cluster, true class) pairs, rows and columns ordered so that a perfect labeling is diagonal.

    Classes are ordered by their largest cluster's size; each cluster follows its majority class, so clusters
    that split a class sit next to each other. Dropped task classes (-1) are left out.
    Returns (matrix (n_clusters, n_classes), cluster ids per row, class ids per column).
    """
    a, t = np.asarray(assigned).ravel(), np.asarray(true_classes).ravel()
    kept = a >= 0
    a, t = a[kept], t[kept]
    clusters, a_idx = np.unique(a, return_inverse=True)
    classes, t_idx = np.unique(t, return_inverse=True)
    matrix = np.zeros((len(clusters), len(classes)), dtype=np.int64)
    np.add.at(matrix, (a_idx, t_idx), 1)
    if not matrix.size:
        return matrix, clusters, classes
    majority = matrix.argmax(axis=1)
    class_order = np.argsort(-matrix.max(axis=0), kind="stable")
    rank = np.empty_like(class_order)
    rank[class_order] = np.arange(len(class_order))
    row_order = np.lexsort((-matrix.max(axis=1), rank[majority]))
    return matrix[row_order][:, class_order], clusters[row_order], classes[class_order]


def contingency_heatmap(assigned: np.ndarray, true_classes: np.ndarray, path: Path) -> Path:
    """Clusters (rows) against true classes (columns), each row as fractions of its cluster; one image,
    so 400 x 400 draws as fast as 10 x 10."""
    matrix, clusters, classes = sorted_contingency(assigned, true_classes)
    fractions = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6, 5))
    image = ax.imshow(fractions, aspect="auto", interpolation="nearest", cmap="viridis", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="share of the cluster's task classes")
    if len(classes) <= 30:
        ax.set_xticks(range(len(classes)), [str(c) for c in classes], fontsize=7, rotation=90)
    if len(clusters) <= 30:
        ax.set_yticks(range(len(clusters)), [str(c) for c in clusters], fontsize=7)
    ax.set_xlabel(f"true class ({len(classes)})")
    ax.set_ylabel(f"inferred cluster ({len(clusters)})")
    return _save(fig, path, left=0.12, right=1.0, top=0.95)


def pipeline_accuracy(rows: Sequence[Mapping[str, object]], path: Path, title: str = "") -> Path:
    """Test accuracy with its 95 % CI per model and column (``results.json`` rows: model, shots, acc, ci; see
    :mod:`mela.reporting.columns`)."""
    from mela.reporting.columns import columns_of, row_column

    shots = columns_of(rows)
    models = list(dict.fromkeys(str(r["model"]) for r in rows))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(shots) * max(len(models), 1) / 2), 3.6))
    width = 0.8 / max(len(models), 1)
    for i, model in enumerate(models):
        cells = {row_column(r): r for r in rows if str(r["model"]) == model}
        xs = [j + (i - (len(models) - 1) / 2) * width for j, k in enumerate(shots) if k in cells]
        accs = [float(cells[k]["acc"]) for k in shots if k in cells]  # type: ignore[arg-type]
        cis = [float(cells[k]["ci"]) for k in shots if k in cells]  # type: ignore[arg-type]
        ax.bar(xs, accs, width, yerr=cis, capsize=3, label=model)
    ax.set_xticks(range(len(shots)), shots)
    ax.set_ylabel("test accuracy (%), 95% CI")
    accs_all = [float(r["acc"]) for r in rows]  # type: ignore[arg-type]
    if accs_all:
        ax.set_ylim(max(0.0, min(accs_all) - 15), min(100.0, max(accs_all) + 10))
    ax.legend(fontsize=8, ncol=min(len(models), 4))
    ax.grid(alpha=0.3, axis="y")
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, path)


def labeler_plots(run_dir: Path, passes: Sequence[Mapping[str, float]], assigned: np.ndarray,
                  true_classes: np.ndarray | None = None) -> list[Path]:
    """The learn_labeler step's three plots in its run folder: ``labeler_passes.png``, ``cluster_sizes.png`` and,
    when the true classes are known, ``contingency.png``. ``passes`` may be empty (reused centroids)."""
    run_dir = Path(run_dir)
    written = [cluster_size_histogram(cluster_sizes(assigned), run_dir / "cluster_sizes.png")]
    if passes:
        written.insert(0, labeler_passes(passes, run_dir / "labeler_passes.png"))
    if true_classes is not None:
        written.append(contingency_heatmap(assigned, true_classes, run_dir / "contingency.png"))
    return written
