"""The labeler on a large ragged task pile: wall time and peak memory (issue 8's scale, issue 11's chunking).

A synthetic ragged pile: ``--classes`` well separated Gaussian classes in ``--dim`` dimensions (unit
within-class trace, class means ``--separation`` times farther apart), ``--tasks`` tasks of 3-8 ways (classes
drawn uniformly, distinct within a task), 1-5 images per class; item features float32, as learn_labeler's.
Each size runs in a fresh process: it builds the pile, notes its peak RSS, runs
``infer_global_labels`` (improved mode, the learn_labeler defaults without the count check, a second
clustering at 0.75 K that the recorded runs predate) and notes the wall time and the peak RSS
again (``resource.getrusage``), so the difference is what the labeler costs beyond holding the features.
The agreement with the true classes (ARI, cluster count) is computed after the timing.

    python benchmarks/labeler_scale.py --tasks 10000            # ~1-2 minutes on 2 cores
    python benchmarks/labeler_scale.py --tasks 10000 100000     # the full run (~10+ minutes)
    python benchmarks/labeler_scale.py --tasks 10000 --recurrence 15   # classes = keys / 15 instead
    python benchmarks/labeler_scale.py --merge-centroids 3670 35000    # the merge step alone on K centroids
    python benchmarks/labeler_scale.py --device cuda --tasks 20000 --classes 10000   # distances on the GPU

``--merge-centroids`` times ``merge_indistinguishable`` alone (the step that used to hold (K, K) matrices) on
K synthetic 64-d centroids: 90 % distinct classes, 10 % near-copies of them that should merge, 1-19 keys each,
20 random cannot-link pairs per centroid, the spread and thresholds of learn_labeler's defaults; the sparse
method, and up to 8,000 centroids the dense one as well (peak RSS grows only: the dense figure is the larger).
``centroids_sha1`` fingerprints the fitted centroids, to compare two versions of the labeler bit for bit.

Writes (merging with what is there, keyed by tasks and classes, or by K) benchmarks/results/labeler_scale.json.
"""

from __future__ import annotations

import argparse
import hashlib
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


def _child(n_tasks: int, n_classes: int | None, recurrence: float | None, dim: int, separation: float,
           device: str) -> None:
    """In a fresh process: build the pile, label it, print the figures as JSON."""
    import torch
    from sklearn.metrics import adjusted_rand_score

    from mela.methods.global_labels import infer_global_labels
    from mela.methods.labeler import LabelerConfig

    rss_start = _rss_mb()
    features, true = ragged_pile(n_tasks, n_classes, recurrence, dim, separation, seed=0)
    rss_pile = _rss_mb()
    start = time.perf_counter()
    labels = infer_global_labels(features, LabelerConfig(count_check=False), device=torch.device(device))
    seconds = time.perf_counter() - start
    rss_peak = _rss_mb()
    n_true = len(np.unique(true))
    print(json.dumps({
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "tasks": n_tasks, "task_classes": int(features.n_classes), "items": int(len(features.items)),
        "true_classes": n_true, "mean_recurrence": round(features.n_classes / n_true, 1), "dim": dim,
        "separation": separation, "features_mb": round(features.items.nbytes / 2**20, 1),
        "labeler_s": round(seconds, 1), "passes": len(labels.passes),
        "centroids": int(len(labels.centroids)), "clusters": labels.n_clusters,
        "ari": round(float(adjusted_rand_score(true, labels.assigned)), 4),
        "centroids_sha1": hashlib.sha1(np.ascontiguousarray(labels.centroids).tobytes()).hexdigest()[:12],
        "rss_after_import_mb": round(rss_start), "rss_after_pile_mb": round(rss_pile),
        "peak_rss_mb": round(rss_peak), "labeler_extra_rss_mb": round(rss_peak - rss_pile),
        "warning": labels.warning,
    }))


def _merge_child(k: int, dim: int, dense_max: int = 8000) -> None:
    """In a fresh process: K synthetic centroids, one merge_indistinguishable (the method it picks), as JSON."""
    from mela.methods.labeler import CentroidPairs, merge_indistinguishable, merge_threshold

    rng = np.random.default_rng(0)
    distinct = k * 9 // 10
    means = 4.0 * rng.normal(size=(distinct, dim)) / np.sqrt(dim)
    copies = means[rng.integers(0, distinct, k - distinct)] + 0.02 * rng.normal(size=(k - distinct, dim))
    centroids = np.concatenate([means, copies])[rng.permutation(k)]
    counts = rng.integers(1, 20, k).astype(np.float64)
    apart = CentroidPairs.from_pairs(rng.integers(0, k, 20 * k), rng.integers(0, k, 20 * k), k)
    different_sq = np.sort(rng.random(100_000) * 8.0 + 1.0)
    s, effective_dim = 0.6, float(dim)
    rss_start = _rss_mb()
    row: dict = {"merge_centroids": k, "dim": dim, "rss_before_mb": round(rss_start)}
    # Sparse first (ru_maxrss only grows), then dense where its (K, K) matrices fit.
    for method in ("sparse", "dense") if k <= dense_max else ("sparse",):
        start = time.perf_counter()
        merged, _ = merge_indistinguishable(centroids, counts, apart, s, merge_threshold(6.0, effective_dim),
                                            different_sq, 0.01 / (k - 1), None, 4.0 * 0.5 * s**2 / effective_dim,
                                            method=method)
        row.update({f"{method}_s": round(time.perf_counter() - start, 2), "merged": int(k - len(merged)),
                    f"{method}_extra_rss_mb": round(_rss_mb() - rss_start),
                    f"{method}_sha1": hashlib.sha1(merged.tobytes()).hexdigest()[:12]})
    print(json.dumps(row))


def _run_key(row: dict) -> tuple:
    """A pile run is replaced by a rerun of the same size on the same device (older rows: the CPU)."""
    return row["tasks"], row["true_classes"], row.get("device", "cpu")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[10_000])
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--recurrence", type=float, default=None, help="classes = task classes / this (overrides)")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--separation", type=float, default=4.0)
    parser.add_argument("--merge-centroids", type=int, nargs="+", default=None,
                        help="time the merge step alone on this many centroids (instead of --tasks)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="where the labeler computes its key-centroid distances (cuda: on the GPU)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    classes = None if args.recurrence else args.classes
    if args.child:
        if args.merge_centroids:
            _merge_child(args.merge_centroids[0], args.dim)
        else:
            _child(args.tasks[0], classes, args.recurrence, args.dim, args.separation, args.device)
        return []
    saved = json.loads(OUT.read_text()) if OUT.is_file() else {}
    rows, merge_rows = saved.get("runs", []), saved.get("merge_runs", [])
    for k in args.merge_centroids or []:
        out = subprocess.run([sys.executable, __file__, "--child", "--merge-centroids", str(k), "--dim", str(args.dim)],
                             check=True, capture_output=True, text=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps(row), flush=True)
        merge_rows = [r for r in merge_rows if r["merge_centroids"] != k] + [row]
    if args.merge_centroids:
        args.tasks = []
    for n_tasks in args.tasks:
        cmd = [sys.executable, __file__, "--child", "--tasks", str(n_tasks), "--dim", str(args.dim),
               "--separation", str(args.separation), "--classes", str(args.classes), "--device", args.device]
        if args.recurrence:
            cmd += ["--recurrence", str(args.recurrence)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps(row), flush=True)
        rows = [r for r in rows if _run_key(r) != _run_key(row)] + [row]
    RESULTS.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({"machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, "
                                          "2 cores shared with other jobs",
                               "runs": sorted(rows, key=_run_key),
                               "merge_runs": sorted(merge_rows, key=lambda r: r["merge_centroids"])}, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main()
