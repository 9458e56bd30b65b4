"""The labeler on piles whose local classes share a source: one session, background or font per local class.

A key averages the m images of one local class. When those images are independent draws of their class, the
spread inside the local class predicts how far two keys of one class lie apart; when they share an offset (the
``shared`` variance per key, on top of unit image noise), keys of one class lie further apart than the images
say. Three labelers on each pile: the reference, the improved labeler with the spread its images predict only
(what it did before it measured the shared part), and the improved labeler as it is (the first pass's
key-to-centroid statistics measure the shared part). Synthetic Gaussian classes, 64-d, 300 classes recurring 4
times in 5-way tasks, keys of 5 images; shared 0 / 0.25 / 0.5 / 1 / 2 (in units of one image's noise), class
separations 2 / 1 / 0.5; plus keys of five identical copies of one image (no spread inside a local class).
Writes benchmarks/results/labeler_shared_noise.{json,md}.

    python benchmarks/labeler_shared_noise.py
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from mela.methods.labeler import (
    LabelerConfig,
    cluster_features,
    clustering_report,
    fit_centroids,
    key_noise,
    key_spread,
    label_tasks,
    task_keys,
)

RESULTS = Path(__file__).parent / "results"
N_CLASSES, DIM, KEY_IMAGES, RECURRENCE = 300, 64, 5, 4
SHARED = (0.0, 0.25, 0.5, 1.0, 2.0)
SEPARATIONS = (2.0, 1.0, 0.5)


def pile(shared: float, separation: float, seed: int, copies: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(T, 5, m, d) features and (T, 5) true classes; ``copies``: m copies of one image per local class."""
    rng = np.random.default_rng(seed)
    means = separation * rng.normal(size=(N_CLASSES, DIM)) / np.sqrt(DIM)
    tasks = []
    for _ in range(RECURRENCE):
        order = rng.permutation(N_CLASSES)
        tasks += [order[i : i + 5] for i in range(0, N_CLASSES - 4, 5)]
    true = np.array(tasks)
    centre = means[true] + np.sqrt(shared) * rng.normal(size=(*true.shape, DIM)) / np.sqrt(DIM)
    if copies:
        image = centre + rng.normal(size=centre.shape) / np.sqrt(DIM)
        return np.repeat(image[:, :, None], KEY_IMAGES, axis=2), true
    return centre[:, :, None] + rng.normal(size=(*true.shape, KEY_IMAGES, DIM)) / np.sqrt(DIM), true


def run(features: np.ndarray, true: np.ndarray) -> dict[str, dict]:
    keys = task_keys(features)
    out = {}
    for name in ("reference", "images only", "improved"):
        start = time.perf_counter()
        if name == "reference":
            centroids = cluster_features(features, LabelerConfig(mode="reference")).centroids
        elif name == "images only":
            spread = key_spread(features)
            centroids = fit_centroids(keys, LabelerConfig(), spread, key_noise(features, spread)).centroids
        else:
            clustering = cluster_features(features, LabelerConfig())
            centroids = clustering.centroids
        report = clustering_report(label_tasks(keys, centroids, "reference" if name == "reference" else "improved"),
                                   true)
        out[name] = {"clusters": report["clusters_with_unassigned"], "ari": report["ari"],
                     "seconds": time.perf_counter() - start}
    spread = clustering.spread
    out["improved"].update(source=spread.source, shared=float(spread.shared), distance=spread.distance,
                           image_distance=key_spread(features).distance)
    return out


def main() -> None:
    rows = []
    cases = [(shared, separation, False) for shared in SHARED for separation in SEPARATIONS]
    cases += [(0.0, separation, True) for separation in SEPARATIONS]
    for i, (shared, separation, copies) in enumerate(cases):
        features, true = pile(shared, separation, i, copies)
        result = run(features, true)
        rows.append({"shared": shared, "separation": separation, "copies": copies, "true_classes": N_CLASSES,
                     **result})
        imp = result["improved"]
        print(f"shared {shared:<4} sep {separation:<3} copies {copies!s:5} | "
              + " | ".join(f"{k} {v['clusters']:4d} ARI {v['ari']:.3f}" for k, v in result.items())
              + f" | {imp['source']} shared {imp['shared']:.2f}", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "labeler_shared_noise.json").write_text(json.dumps({"rows": rows}, indent=1))
    head = ("| shared | separation | keys | reference clusters / ARI | images only clusters / ARI | "
            "improved clusters / ARI | improved spread (shared measured) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        imp = r["improved"]
        keys = "5 copies of one image" if r["copies"] else "5 images"
        lines.append(f"| {r['shared']:g} | {r['separation']:g} | {keys} | "
                     + " | ".join(f"{r[k]['clusters']} / {r[k]['ari']:.3f}" for k in ("reference", "images only",
                                                                                  "improved"))
                     + f" | {imp['source']} ({imp['shared']:.2f}) |")
    (RESULTS / "labeler_shared_noise.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
