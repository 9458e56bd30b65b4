"""How much time metrics.csv, TensorBoard events, the plots and the report add to a pipeline.

Runs ``mela pipeline`` once in a fresh workspace with a timer around every reporting entry point
(MetricsWriter, learning curves, the labeler's plots, accuracy.png + report.md/html) and writes
benchmarks/results/reporting_overhead[_tiny].json. Timing inside the one run, rather than comparing two
runs, keeps the number meaningful on a shared machine whose run-to-run noise is larger than the overhead.

    python benchmarks/reporting_overhead.py          # the demo (`make demo`'s pipeline), minutes on a CPU
    python benchmarks/reporting_overhead.py --tiny   # a 20-class glyph slice, one epoch per step (~1 min)
    python benchmarks/reporting_overhead.py --demo-plots  # only the demo-sized plots, on made-up numbers (seconds)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
TINY = ["learn_meta_repr.epochs=1", "learn_meta_repr.lr_decay_epochs=1", "learn_labeler.epochs=1",
        "learn_labeler.lr_decay_epochs=1", "learn_labeler.K=40", "sup_baseline.epochs=1",
        "sup_baseline.lr_decay_epochs=1", "fine_tune.epochs=1", "n_queries=2", "val_db_size=10",
        "test_db_size=20", "meta_eval.n_queries=5", "n_ways=4", "image_size=32"]
spent: dict[str, float] = defaultdict(float)
calls: dict[str, int] = defaultdict(int)


def timed(name: str, function: Callable) -> Callable:
    def wrapper(*args: object, **kwargs: object) -> object:
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent[name] += time.perf_counter() - start
            calls[name] += 1

    return wrapper


def glyph_slice(folder: Path) -> list[str]:
    """The test suite's slice: 20 train glyph classes, 16 designs each, split 12 / 4 / 4."""
    from mela.data import glyphs

    train = glyphs.load(Path("."), "train")
    keep = np.concatenate([np.flatnonzero(train.labels == c)[:16] for c in range(20)])
    names = [f"c{c:02d}" for c in range(20)]
    np.savez(folder / "slice.npz", images=train.images[keep, :, :, 0], labels=np.array(names)[train.labels[keep]])
    (folder / "split.json").write_text(json.dumps({"train": names[:12], "val": names[12:16], "test": names[16:]}))
    return ["dataset=custom", f"custom_path={folder / 'slice.npz'}", f"custom_split={folder / 'split.json'}"]


def matplotlib_import_seconds() -> float:
    """Importing the plotting module in a fresh process that already has torch (what a step pays once)."""
    code = ("import time, torch; t = time.perf_counter(); import mela.reporting.plots; "
            "print(time.perf_counter() - t)")
    return float(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout)


def demo_sized_plots(folder: Path, repeats: int = 3) -> dict:
    """The demo's plots drawn from made-up numbers of the demo's sizes (8 epochs; 284 tasks x 5 classes in 357
    clusters of 355 true classes; 4 models x 2 shot counts): median seconds of ``repeats``, no training needed."""
    from mela.reporting import plots

    rng = np.random.default_rng(0)
    history = [{"epoch": e, "lr": 0.05 * 0.1 ** (e > 6), "loss": 2.0 / e, "train_acc": 50 + 5 * e,
                **({"val_1shot": 90.0 + e, "val_5shot": 95.0 + e / 2} if e >= 6 else {}), "seconds": 30.0}
               for e in range(1, 9)]
    true_classes = rng.integers(0, 355, (284, 5))
    assigned = np.where(rng.random((284, 5)) < 0.98, true_classes, rng.integers(0, 357, (284, 5)))
    passes = [{"centroids_before": 400, "spawned": 3, "pruned": 40, "merged": 2, "centroids_after": 361},
              {"centroids_before": 361, "spawned": 0, "pruned": 4, "merged": 0, "centroids_after": 357}]
    rows = [{"model": m, "shots": k, "acc": 95.0 + k / 2, "ci": 0.3} for m in ("meta_repr", "mela", "mela_finetune",
                                                                            "oracle") for k in (1, 5)]
    jobs = {"learning_curves.png (one step)": lambda: plots.learning_curves(history, folder / "c.png", "demo"),
            "labeler plots (three)": lambda: plots.labeler_plots(folder, passes, assigned, true_classes),
            "accuracy.png": lambda: plots.pipeline_accuracy(rows, folder / "a.png", "demo")}
    out = {}
    for name, job in jobs.items():
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            job()
            times.append(time.perf_counter() - start)
        out[name] = round(float(np.median(times)), 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a 20-class glyph slice, one epoch per step")
    parser.add_argument("--keep", type=Path, default=None, help="a workspace folder to keep the runs in (default: "
                        "a temporary one, removed)")
    parser.add_argument("--demo-plots", action="store_true", help="only the demo-sized plots, on made-up numbers")
    args = parser.parse_args()
    if args.demo_plots:
        with tempfile.TemporaryDirectory(prefix="mela-bench-") as tmp:
            result = {"median_seconds": demo_sized_plots(Path(tmp))}
        (RESULTS / "reporting_overhead_demo_plots.json").write_text(json.dumps(result, indent=1))
        print(json.dumps(result, indent=1))
        return
    import_seconds = matplotlib_import_seconds()

    from mela.config import compose_config
    from mela.reporting import metrics, plots
    from mela.steps import pipeline

    for name in ("__init__", "log_epoch", "log_labeler", "close"):
        setattr(metrics.MetricsWriter, name, timed("metrics.csv + TensorBoard", getattr(metrics.MetricsWriter, name)))
    plots.learning_curves = timed("learning_curves.png", plots.learning_curves)
    plots.labeler_plots = timed("labeler plots", plots.labeler_plots)
    pipeline.write_pipeline_report = timed("accuracy.png + report", pipeline.write_pipeline_report)

    with tempfile.TemporaryDirectory(prefix="mela-bench-") as tmp:
        workspace = args.keep or Path(tmp) / "ws"
        overrides = [f"workspace={workspace}", "run_name=bench", "progress=false"]
        if args.tiny:
            overrides += glyph_slice(Path(tmp)) + TINY
        start = time.perf_counter()
        results = pipeline.run(pipeline.read_settings(compose_config("pipeline", overrides)))
        total = time.perf_counter() - start
        folder = Path(results["path"]).parent
        html_bytes = (folder / "report.html").stat().st_size
    reporting = sum(spent.values())
    result = {
        "pipeline": "tiny glyph slice" if args.tiny else "make demo (glyphs)",
        "pipeline_seconds": round(total, 2),
        "reporting_seconds": round(reporting, 2),
        "reporting_share": round(reporting / total, 4),
        "parts_seconds": {k: round(v, 3) for k, v in spent.items()},
        "calls": dict(calls),
        "plots_module_import_seconds": round(import_seconds, 3),
        "report_html_bytes": html_bytes,
        "tensorboard_installed": metrics.tensorboard_writer_class() is not None,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"reporting_overhead{'_tiny' if args.tiny else ''}.json"
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
