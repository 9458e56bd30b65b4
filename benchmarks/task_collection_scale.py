"""A large task collection: loading its manifest and labelling it, time and peak memory (issue 8's
100,000-task figures).

Makes a synthetic labelled split (``--classes`` classes of ``--per-class`` ``--side`` px grey images, each a
noisy copy of its class's random pattern),
draws ``--tasks`` tasks from it with ``mela tasks make``'s generator (3-8 ways, 1-5 images per class, classes
recurring 1-30 times, images shared between tasks), writes them as a manifest (each image file once), then
loads the manifest in a fresh process and records its wall time and peak RSS, next to the peak RSS of a
process that only imports mela (so the difference is what loading costs). Then, in the same process, the
labeler clusters every task class of the collection (improved mode, default settings) on 64-d features
(a fixed random projection of the pixels, L2-normalised: a stand-in for a trained network that keeps the
classes apart), and its time, peak RSS and agreement with ``truth.csv`` are recorded (``--no-labeler`` skips it).

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


def _peak_rss_mb() -> float:
    """This process's peak resident memory: VmHWM, which exec resets (``ru_maxrss`` keeps the peak of the parent
    that forked the child, here the generator holding all the made tasks)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _load_child(manifest: str, labeler: bool) -> None:
    """In a fresh process: load the manifest (and label it), print times, peak RSS and sizes as JSON."""
    from mela.data.tasks import load_manifest

    start = time.perf_counter()
    collection = load_manifest(manifest)
    seconds = time.perf_counter() - start
    arrays = sum(a.nbytes for a in (collection.task_offsets, collection.class_offsets, collection.item_image))
    out = {"load_s": round(seconds, 2), "peak_rss_mb": _peak_rss_mb(), "images_mb": collection.images.nbytes / 2**20,
           "index_arrays_mb": arrays / 2**20, "summary": collection.summary()}
    if labeler:
        out.update(_label(collection))
    print(json.dumps(out))


def _label(collection) -> dict:  # noqa: ANN001
    """Cluster the collection's task classes on random-projection features; time, memory, agreement."""
    from mela.methods.global_labels import infer_global_labels
    from mela.methods.labeler import LabelerConfig, RaggedFeatures

    pixels = collection.images.reshape(len(collection.images), -1).astype(np.float32) / 255.0
    projection = np.random.default_rng(1).normal(size=(pixels.shape[1], 64)).astype(np.float32)
    image_features = pixels @ projection
    image_features -= image_features.mean(axis=0)
    image_features /= np.linalg.norm(image_features, axis=1, keepdims=True)
    features = RaggedFeatures(image_features[collection.item_image], collection.class_offsets,
                              collection.task_offsets)
    before = _peak_rss_mb()
    start = time.perf_counter()
    # Without the count check (a second clustering at 0.75 K): the recorded runs time the clustering alone.
    labels = infer_global_labels(features, LabelerConfig(count_check=False))
    seconds = time.perf_counter() - start
    report = labels.report(collection.class_truth)
    return {"labeler_s": round(seconds, 1), "labeler_passes": len(labels.passes), "clusters": report["clusters"],
            "true_classes": report["true_classes"], "ari": round(report["ari"], 4), "nmi": round(report["nmi"], 4),
            "features_mb": round(features.items.nbytes / 2**20, 1), "peak_rss_before_labeler_mb": round(before),
            "peak_rss_with_labeler_mb": round(_peak_rss_mb())}


def _baseline_child() -> None:
    import mela.data.tasks  # noqa: F401

    print(json.dumps({"peak_rss_mb": _peak_rss_mb()}))


def _child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=None, help="default: tasks / 5 (recurrences stay in 1-30)")
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--recur", default="1-30", help="how often a class recurs, LOW-HIGH (mela tasks make --recur)")
    parser.add_argument("--side", type=int, default=16)
    parser.add_argument("--dir", help="work folder (default: a temporary one, removed afterwards)")
    parser.add_argument("--no-labeler", action="store_true", help="only load the manifest")
    parser.add_argument("--load-child", help=argparse.SUPPRESS)
    parser.add_argument("--baseline-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.load_child:
        _load_child(args.load_child, not args.no_labeler)
        return {}
    if args.baseline_child:
        _baseline_child()
        return {}

    from mela.data.base import ImageSplit
    from mela.data.task_maker import MakeSettings, make_tasks, write_tasks

    n_classes = args.classes or max(args.tasks // 5, 20)
    rng = np.random.default_rng(0)
    patterns = rng.integers(0, 256, (n_classes, 1, args.side, args.side, 1)).astype(np.float32)
    noise = rng.normal(0, 40, (n_classes, args.per_class, args.side, args.side, 1)).astype(np.float32)
    images = np.clip(patterns + noise, 0, 255).astype(np.uint8).reshape(-1, args.side, args.side, 1)
    split = ImageSplit(images, np.repeat(np.arange(n_classes), args.per_class))
    with tempfile.TemporaryDirectory(dir=args.dir) as work:
        start = time.perf_counter()
        low, high = (int(v) for v in args.recur.split("-"))
        made = make_tasks(split, MakeSettings(n_tasks=args.tasks, recur=(low, high), seed=0))
        make_s = time.perf_counter() - start
        start = time.perf_counter()
        manifest = write_tasks(made, split, Path(work) / "tasks", "manifest")
        write_s = time.perf_counter() - start
        with open(manifest) as handle:
            rows = sum(1 for _ in handle) - 1
        baseline = _child("--baseline-child")
        loaded = _child("--load-child", str(manifest), *(["--no-labeler"] if args.no_labeler else []))
    result = {
        "tasks": args.tasks, "classes": n_classes, "recur": args.recur, "manifest_rows": rows, "image_side": args.side,
        "make_s": round(make_s, 2), "write_s": round(write_s, 2), **{k: v for k, v in loaded.items()},
        "import_only_peak_rss_mb": baseline["peak_rss_mb"],
        "load_peak_rss_over_import_mb": round(loaded["peak_rss_mb"] - baseline["peak_rss_mb"], 1),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "python": platform.python_version(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"task_collection_scale_{args.tasks}{'_load' if args.no_labeler else ''}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
