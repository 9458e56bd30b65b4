"""Which labeler settings hold on task collections nobody tuned them for: count and ARI per setting and pile.

Piles vary the way users' collections do: two image domains (the built-in glyphs, 1-channel; and ``blobs``,
small colour images of coloured shapes on light backgrounds of random colour, placed, sized and shaded at
random, where a short meta-training gives much weaker features), class recurrence heavy-tailed (1-30, most
classes rare) or near uniform (8-12), 1-image or 1-5-image local classes, 3-8 or 3-20 ways. For each pile one
convnet4 is meta-trained as the pipeline does (6 epochs, decay at 4 and 5, 4 tasks a step, no augmentation),
the features of its training tasks are computed once, and every candidate labeler setting clusters them; the
result is scored against the true classes (count, ARI). Writes ``benchmarks/results/collection_defaults.json``
and ``.md``.

    python benchmarks/collection_defaults.py              # every pile (about 10 minutes on 2 idle cores)
    python benchmarks/collection_defaults.py --piles glyphs_heavy_1-5,blobs_heavy_1-5
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from mela.api import (
    create_model,
    label_pile,
    load_dataset,
    meta_train,
    open_tasks,
    task_features,
)
from mela.data.base import ImageSplit
from mela.data.task_maker import MakeSettings, make_tasks
from mela.engine.precision import ComputeSettings
from mela.methods.collection_labels import collection_image_features, ragged_features
from mela.methods.global_labels import infer_global_labels
from mela.methods.labeler import LabelerConfig

RESULTS = Path(__file__).parent / "results"

# name -> (domain, tasks, ways, shots, recur)
PILES = {
    "glyphs_heavy_1-5": ("glyphs", 1200, (3, 8), (1, 5), (1, 30)),
    "glyphs_heavy_1": ("glyphs", 1200, (3, 8), (1, 1), (1, 30)),
    "glyphs_uniform_5": ("glyphs", 600, (5, 5), (5, 5), (8, 12)),
    "glyphs_wide_1-5": ("glyphs", 700, (3, 20), (1, 5), (1, 30)),
    "blobs_heavy_1-5": ("blobs", 1200, (3, 8), (1, 5), (1, 30)),
    "blobs_uniform_1-5": ("blobs", 1200, (3, 8), (1, 5), (8, 12)),
    "glyphs_demo": ("glyphs", 0, (5, 5), (10, 10), (4, 4)),  # the demo's own pile: 5 ways, 10 images, no overlap
    "blobs_weak_1-5": ("blobs", 1200, (3, 8), (1, 5), (1, 30)),  # meta-trained one epoch only: weak features
}
EPOCHS = {"blobs_weak_1-5": (1, ())}  # (epochs, lr decay epochs) where not the pipeline's (6, (4, 5))

CANDIDATES = {
    "plain (K=400, merge 6 / 0.01)": LabelerConfig(K=400),
    "pipeline_tasks (K=800, merge 20 / 1.0)": LabelerConfig(K=800, merge_factor=20.0, merge_risk=1.0),
    "K=400, merge 20 / 1.0": LabelerConfig(K=400, merge_factor=20.0, merge_risk=1.0),
    "K=600, merge 20 / 1.0": LabelerConfig(K=600, merge_factor=20.0, merge_risk=1.0),
    "K=400, merge 12 / 0.1": LabelerConfig(K=400, merge_factor=12.0, merge_risk=0.1),
    "reference (K=400)": LabelerConfig(K=400, mode="reference"),
}


def blobs_split(n_classes: int = 700, per_class: int = 20, size: int = 32, seed: int = 0) -> ImageSplit:
    """Colour shapes on light backgrounds: a class is 2-3 coloured ellipses and bars in a layout; each image
    moves, scales and shades them, paints a new light background, mostly adds one clutter shape of random
    colour and place, plus pixel noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    images = np.empty((n_classes * per_class, size, size, 3), dtype=np.uint8)
    for c in range(n_classes):
        parts = []
        for _ in range(rng.integers(2, 4)):
            parts.append((rng.uniform(0.25, 0.75, 2), rng.uniform(0.08, 0.25, 2), rng.uniform(0, np.pi),
                          rng.uniform(0, 0.8, 3), rng.random() < 0.4))
        for i in range(per_class):
            background = rng.uniform(0.75, 1.0, 3)
            img = np.broadcast_to(background, (size, size, 3)).copy()
            shift, scale, shade = rng.normal(0, 0.09, 2), rng.uniform(0.7, 1.3), rng.uniform(0.7, 1.2)
            clutter = (rng.uniform(0.1, 0.9, 2) - shift, rng.uniform(0.05, 0.18, 2), rng.uniform(0, np.pi),
                       rng.uniform(0, 0.9, 3), rng.random() < 0.5)
            for centre, radii, angle, colour, bar in [clutter, *parts] if rng.random() < 0.7 else parts:
                cy, cx = centre + shift
                dy, dx = (yy - cy) / scale, (xx - cx) / scale
                u = dx * np.cos(angle) + dy * np.sin(angle)
                v = -dx * np.sin(angle) + dy * np.cos(angle)
                if bar:
                    mask = (np.abs(u) < radii[0]) & (np.abs(v) < radii[1] * 0.35)
                else:
                    mask = (u / radii[0]) ** 2 + (v / radii[1]) ** 2 < 1
                img[mask] = np.clip(colour * shade, 0, 1)
            img += rng.normal(0, 0.04, img.shape)
            images[c * per_class + i] = np.clip(img * 255, 0, 255).astype(np.uint8)
    return ImageSplit(images, np.repeat(np.arange(n_classes), per_class))


def pile(name: str, source: ImageSplit):
    domain, n_tasks, ways, shots, recur = PILES[name]
    made = make_tasks(source, MakeSettings(n_tasks, ways, shots, recur, True, 0))
    pairs = []
    for task in made:
        items = np.concatenate(task.items)
        local = np.repeat(np.arange(len(task.items)), [len(i) for i in task.items])
        true = np.repeat(np.asarray(task.classes), [len(i) for i in task.items])
        pairs.append((source.images[source.item_images()[items]], local, true))
    return open_tasks(pairs, holdout=0.1, val=0.05, seed=0)


def score(result, truth: np.ndarray) -> dict:
    report = result.report(truth)
    diagnostics = result.diagnostics or {}
    count_check = diagnostics.get("count_check") or {}
    return {"clusters": int(report["clusters"]), "ari": round(float(report.get("ari", float("nan"))), 3),
            "count_slope": count_check.get("slope"), "warning": bool(diagnostics.get("warning"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--piles", default=",".join(PILES))
    parser.add_argument("--tag", default="")
    parser.add_argument("--rows", default="", help="a JSON file of earlier rows to keep (rerun of some piles)")
    args = parser.parse_args()
    torch.manual_seed(0)
    sources = {}
    rows = json.loads(Path(args.rows).read_text())["rows"] if args.rows else []
    started = time.perf_counter()
    for name in args.piles.split(","):
        domain = PILES[name][0]
        if domain not in sources:
            sources[domain] = load_dataset("glyphs", "train") if domain == "glyphs" else blobs_split()
        t0 = time.perf_counter()
        if name == "glyphs_demo":  # the demo's learn_meta_repr, then learn_labeler's pile of the train split
            model = create_model("convnet4", 1)
            meta_train(model, "glyphs", epochs=6, lr_decay_epochs=(4, 5), data_aug=False, tasks_per_step=4,
                       log=None)
            tasks = label_pile("glyphs")
            features = task_features(model, "glyphs", tasks)
            truth = sources[domain].labels[tasks[:, :, 0]]
            n_tasks, n_task_classes = len(tasks), tasks.shape[0] * tasks.shape[1]
        else:
            data = pile(name, sources[domain])
            train = data.tasks("train")
            truth = train.class_truth
            model = create_model("convnet4", int(train.images.shape[-1]))
            epochs, decay = EPOCHS.get(name, (6, (4, 5)))
            meta_train(model, data, epochs=epochs, lr_decay_epochs=decay, data_aug=False, tasks_per_step=4, log=None)
            image_features = collection_image_features(model, train, data.mean, data.std, torch.device("cpu"))
            features = ragged_features(train, image_features)
            n_tasks, n_task_classes = train.n_tasks, train.n_classes
        row = {"pile": name, "domain": domain, "tasks": int(n_tasks), "task_classes": int(n_task_classes),
               "true_classes": int(len(np.unique(truth))), "train_s": round(time.perf_counter() - t0, 1),
               "precision": ComputeSettings().resolve("cpu", "convnet4").describe(), "settings": {}}
        for label, config in CANDIDATES.items():
            result = infer_global_labels(features, config, None, torch.device("cpu"))
            row["settings"][label] = score(result, truth)
            print(name, label, row["settings"][label], flush=True)
        rows.append(row)
        write(rows, args.tag, time.perf_counter() - started)  # after every pile: a failed one loses nothing
    print(markdown(rows))


def write(rows: list[dict], tag: str, seconds: float) -> None:
    out = {"candidates": {k: asdict(v) for k, v in CANDIDATES.items()}, "piles": PILES, "epochs": EPOCHS,
           "rows": rows, "total_s": round(seconds, 1)}
    suffix = f"_{tag}" if tag else ""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"collection_defaults{suffix}.json").write_text(json.dumps(out, indent=1, default=str) + "\n")
    (RESULTS / f"collection_defaults{suffix}.md").write_text(markdown(rows))


def markdown(rows: list[dict]) -> str:
    labels = list(rows[0]["settings"])
    lines = ["| pile | true classes | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
    for row in rows:
        cells = [f"{s['clusters']} / {s['ari']:.3f}{' (w)' if s['warning'] else ''}" for s in row["settings"].values()]
        lines.append(f"| {row['pile']} | {row['true_classes']} | " + " | ".join(cells) + " |")
    lines.append("\nclusters / ARI against the true classes; (w): the labeler warned (count or over-split check).")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
