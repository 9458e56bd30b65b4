"""Loading a large task manifest: time and peak memory (issue 8's 100,000-task figure).

Makes a synthetic labelled split (``--classes`` classes of ``--per-class`` random ``--side`` px grey images),
draws ``--tasks`` tasks from it with ``mela tasks make``'s generator (3-8 ways, 1-5 images per class, classes
recurring 1-30 times, images shared between tasks), writes them as a manifest (each image file once), then
loads the manifest in a fresh process and records its wall time and peak RSS, next to the peak RSS of a
process that only imports mela (so the difference is what loading costs).

    python benchmarks/task_collection_scale.py --tasks 5000            # small: ~1 minute on 2 cores
    python benchmarks/task_collection_scale.py                         # the full 100,000-task run

Writes benchmarks/results/task_collection_scale_<tasks>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"


def _load_child(manifest: str) -> None:
    """In a fresh process: load the manifest, print time, peak RSS and array sizes as JSON."""
    from mela.data.tasks import load_manifest

    start = time.perf_counter()
    collection = load_manifest(manifest)
    seconds = time.perf_counter() - start
    arrays = sum(a.nbytes for a in (collection.task_offsets, collection.class_offsets, collection.item_image))
    print(json.dumps({"load_s": round(seconds, 2), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                      / 1024, "images_mb": collection.images.nbytes / 2**20, "index_arrays_mb": arrays / 2**20,
                      "summary": collection.summary()}))


def _baseline_child() -> None:
    import mela.data.tasks  # noqa: F401

    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def _child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=None, help="default: tasks / 5 (recurrences stay in 1-30)")
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--side", type=int, default=16)
    parser.add_argument("--dir", help="work folder (default: a temporary one, removed afterwards)")
    parser.add_argument("--load-child", help=argparse.SUPPRESS)
    parser.add_argument("--baseline-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.load_child:
        _load_child(args.load_child)
        return {}
    if args.baseline_child:
        _baseline_child()
        return {}

    from mela.data.base import ImageSplit
    from mela.data.task_maker import MakeSettings, make_tasks, write_tasks

    n_classes = args.classes or max(args.tasks // 5, 20)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n_classes * args.per_class, args.side, args.side, 1), dtype=np.uint8)
    split = ImageSplit(images, np.repeat(np.arange(n_classes), args.per_class))
    with tempfile.TemporaryDirectory(dir=args.dir) as work:
        start = time.perf_counter()
        made = make_tasks(split, MakeSettings(n_tasks=args.tasks, seed=0))
        make_s = time.perf_counter() - start
        start = time.perf_counter()
        manifest = write_tasks(made, split, Path(work) / "tasks", "manifest")
        write_s = time.perf_counter() - start
        with open(manifest) as handle:
            rows = sum(1 for _ in handle) - 1
        baseline = _child("--baseline-child")
        loaded = _child("--load-child", str(manifest))
    result = {
        "tasks": args.tasks, "classes": n_classes, "manifest_rows": rows, "image_side": args.side,
        "make_s": round(make_s, 2), "write_s": round(write_s, 2), **{k: v for k, v in loaded.items()},
        "import_only_peak_rss_mb": baseline["peak_rss_mb"],
        "load_peak_rss_over_import_mb": round(loaded["peak_rss_mb"] - baseline["peak_rss_mb"], 1),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "python": platform.python_version(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"task_collection_scale_{args.tasks}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
