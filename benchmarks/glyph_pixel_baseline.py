"""Raw-pixel nearest-centroid baseline on the glyphs test classes.

Why: a floor every learned method must beat; 5-way 1-shot and 5-shot, 1000 seeded tasks with
15 queries per class, pixels scaled to [0, 1], Euclidean distance to the class-mean image.
Writes benchmarks/results/glyph_pixel_baseline.json and prints it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mela.data.glyphs import load

N_WAY, N_QUERY, N_TASKS, SEED = 5, 15, 1000, 0
OUT = Path(__file__).resolve().parent / "results" / "glyph_pixel_baseline.json"


def task_accuracy(pixels: np.ndarray, by_class: list[np.ndarray], n_shot: int, rng: np.random.Generator) -> float:
    """Accuracy on one N_WAY-way task: support mean per class, nearest centroid for each query."""
    classes = rng.choice(len(by_class), N_WAY, replace=False)
    centroids, queries, truth = [], [], []
    for way, cls in enumerate(classes):
        rows = rng.choice(by_class[cls], n_shot + N_QUERY, replace=False)
        centroids.append(pixels[rows[:n_shot]].mean(axis=0))
        queries.append(pixels[rows[n_shot:]])
        truth.append(np.full(N_QUERY, way))
    q, c = np.concatenate(queries), np.stack(centroids)
    dist = (q**2).sum(1, keepdims=True) - 2 * q @ c.T + (c**2).sum(1)
    return float((dist.argmin(axis=1) == np.concatenate(truth)).mean())


def evaluate(n_shot: int) -> dict[str, float]:
    split = load(Path("."), "test")
    pixels = split.images.reshape(len(split.images), -1).astype(np.float64) / 255.0
    by_class = [np.flatnonzero(split.labels == c) for c in range(split.n_classes)]
    rng = np.random.default_rng([SEED, n_shot])
    accs = np.array([task_accuracy(pixels, by_class, n_shot, rng) for _ in range(N_TASKS)])
    return {"mean": round(float(accs.mean()), 4), "ci95": round(float(1.96 * accs.std(ddof=1) / np.sqrt(N_TASKS)), 4)}


def main() -> dict:
    result = {
        "dataset": "glyphs",
        "split": "test",
        "method": "raw-pixel nearest centroid (Euclidean), pixels in [0, 1]",
        "n_way": N_WAY,
        "n_query": N_QUERY,
        "n_tasks": N_TASKS,
        "seed": SEED,
        "1_shot": evaluate(1),
        "5_shot": evaluate(5),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
