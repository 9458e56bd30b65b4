"""The labeler on a large ragged task pile: wall time and peak memory (issue 8's scale, issue 11's chunking).

A synthetic ragged pile: ``--classes`` well separated Gaussian classes in ``--dim`` dimensions (unit
within-class trace, class means ``--separation`` times farther apart), ``--tasks`` tasks of 3-8 ways (classes
drawn uniformly, distinct within a task), 1-5 images per class; item features float32, as learn_labeler's.
Each size runs in a fresh process: it builds the pile, notes its peak RSS, runs
``infer_global_labels`` (improved mode, the learn_labeler defaults) and notes the wall time and the peak RSS
again (``resource.getrusage``), so the difference is what the labeler costs beyond holding the features.
The agreement with the true classes (ARI, cluster count) is computed after the timing.

    python benchmarks/labeler_scale.py --tasks 10000            # ~1-2 minutes on 2 cores
    python benchmarks/labeler_scale.py --tasks 10000 100000     # the full run (~10+ minutes)
    python benchmarks/labeler_scale.py --tasks 10000 --recurrence 15   # classes = keys / 15 instead

Writes (merging with what is there, keyed by tasks and classes) benchmarks/results/labeler_scale.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
OUT = RESULTS / "labeler_scale.json"
WAYS = (3, 8)
SIZES = (1, 5)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def ragged_pile(n_tasks: int, n_classes: int | None, recurrence: float | None, dim: int, separation: float,
                seed: int) -> tuple[object, np.ndarray]:
    """A RaggedFeatures pile and the flat true class of each task class (items generated in float32 blocks)."""
    from mela.methods.labeler import RaggedFeatures

    rng = np.random.default_rng(seed)
    ways = rng.integers(WAYS[0], WAYS[1] + 1, n_tasks)
    if n_classes is None:
        n_classes = max(int(round(ways.sum() / recurrence)), WAYS[1])
    # Classes of a task drawn uniformly, redrawn until distinct.
    classes = rng.integers(0, n_classes, (n_tasks, WAYS[1]))
    while (bad := (np.diff(np.sort(classes, axis=1), axis=1) == 0).any(axis=1)).any():
        classes[bad] = rng.integers(0, n_classes, (int(bad.sum()), WAYS[1]))
    true = classes[np.arange(WAYS[1])[None, :] < ways[:, None]]
    sizes = rng.integers(SIZES[0], SIZES[1] + 1, len(true))
    means = (separation * rng.normal(size=(n_classes, dim)) / np.sqrt(dim)).astype(np.float32)
    item_class = np.repeat(true, sizes)
    items = np.empty((len(item_class), dim), dtype=np.float32)
    for lo in range(0, len(items), 1 << 18):
        block = item_class[lo : lo + (1 << 18)]
        items[lo : lo + len(block)] = means[block] + rng.standard_normal((len(block), dim), dtype=np.float32) / np.sqrt(
            np.float32(dim))
    offsets = lambda counts: np.r_[0, np.cumsum(counts)].astype(np.int64)  # noqa: E731
    return RaggedFeatures(items, offsets(sizes), offsets(ways)), true


def _child(n_tasks: int, n_classes: int | None, recurrence: float | None, dim: int, separation: float) -> None:
    """In a fresh process: build the pile, label it, print the figures as JSON."""
    from sklearn.metrics import adjusted_rand_score

    from mela.methods.global_labels import infer_global_labels
    from mela.methods.labeler import LabelerConfig

    rss_start = _rss_mb()
    features, true = ragged_pile(n_tasks, n_classes, recurrence, dim, separation, seed=0)
    rss_pile = _rss_mb()
    start = time.perf_counter()
    labels = infer_global_labels(features, LabelerConfig())
    seconds = time.perf_counter() - start
    rss_peak = _rss_mb()
    n_true = len(np.unique(true))
    print(json.dumps({
        "tasks": n_tasks, "task_classes": int(features.n_classes), "items": int(len(features.items)),
        "true_classes": n_true, "mean_recurrence": round(features.n_classes / n_true, 1), "dim": dim,
        "separation": separation, "features_mb": round(features.items.nbytes / 2**20, 1),
        "labeler_s": round(seconds, 1), "passes": len(labels.passes),
        "centroids": int(len(labels.centroids)), "clusters": labels.n_clusters,
        "ari": round(float(adjusted_rand_score(true, labels.assigned)), 4),
        "rss_after_import_mb": round(rss_start), "rss_after_pile_mb": round(rss_pile),
        "peak_rss_mb": round(rss_peak), "labeler_extra_rss_mb": round(rss_peak - rss_pile),
        "warning": labels.warning,
    }))


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[10_000])
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--recurrence", type=float, default=None, help="classes = task classes / this (overrides)")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--separation", type=float, default=4.0)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    classes = None if args.recurrence else args.classes
    if args.child:
        _child(args.tasks[0], classes, args.recurrence, args.dim, args.separation)
        return []
    rows = json.loads(OUT.read_text())["runs"] if OUT.is_file() else []
    for n_tasks in args.tasks:
        cmd = [sys.executable, __file__, "--child", "--tasks", str(n_tasks), "--dim", str(args.dim),
               "--separation", str(args.separation), "--classes", str(args.classes)]
        if args.recurrence:
            cmd += ["--recurrence", str(args.recurrence)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps(row), flush=True)
        rows = [r for r in rows if (r["tasks"], r["true_classes"]) != (row["tasks"], row["true_classes"])] + [row]
    RESULTS.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({"machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, "
                                          "2 cores shared with other jobs",
                               "runs": sorted(rows, key=lambda r: (r["tasks"], r["true_classes"]))}, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main()
