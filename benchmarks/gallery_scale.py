"""The gallery of global classes at scale: 10,000 synthetic global classes, build time and file sizes.

A synthetic pile: ``--classes`` Gaussian classes in ``--dim`` dimensions, each recurring ``--recurrence`` times
in 5-way tasks; the labels are the true classes with 2 % of the keys moved to another class (mixed) and 2 % of
the classes split in two, so the ranking has something to find. Images are 28 px grey, glyph-like (random
7 x 7 binary patterns blown up 4 times; one per task class). Times, each alone: the doubt score
(``class_doubt``), the thumbnails and strips (``build_gallery``), saving them (``gallery.json`` +
``gallery_thumbs.npz``), the review view that report.html embeds (``gallery_html``, bounded by ``--top``, not
by the class count) and the full list (``write_gallery_pages``, ``PAGE_SIZE`` classes per page). Sizes: the
run folder's files, the review view and the pages. Also the doubt score's precision in the top 10 % against
the constructed truth.

    python benchmarks/gallery_scale.py                    # 10,000 classes (about 30 s on 2 cores)
    python benchmarks/gallery_scale.py --classes 1000     # quick

Writes benchmarks/results/gallery_scale.json (merging with what is there, keyed by the class count).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from mela.methods.doubt import class_doubt, precision_at, truth_flags
from mela.reporting.gallery import PAGE_SIZE, build_gallery, gallery_html, save_gallery, write_gallery_pages

RESULTS = Path(__file__).parent / "results" / "gallery_scale.json"


def pile(classes: int, dim: int, recurrence: int, seed: int):
    """Keys, labels with errors, task offsets and true classes."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(classes, dim)) * 2.0 / np.sqrt(dim)
    true = np.concatenate([rng.permutation(classes) for _ in range(recurrence)])
    true = true[: len(true) // 5 * 5]
    keys = means[true] + rng.normal(size=(len(true), dim)) * 0.5 / np.sqrt(dim)
    labels = true.copy()
    moved = rng.choice(len(true), len(true) // 50, replace=False)
    labels[moved] = rng.integers(0, classes, len(moved))
    split = rng.choice(classes, classes // 50, replace=False)
    halves = np.isin(true, split) & (rng.random(len(true)) < 0.5)
    labels[halves] = classes + np.searchsorted(np.sort(split), true[halves])
    return keys, labels, np.arange(0, len(true) + 1, 5), true


def measure(classes: int, dim: int, recurrence: int, top: int) -> dict:
    keys, labels, offsets, true = pile(classes, dim, recurrence, 0)
    noise = 0.25
    timings = {}
    start = time.perf_counter()
    doubt = class_doubt(keys, labels, offsets, noise, float(dim))
    timings["doubt_s"] = time.perf_counter() - start
    names = [f"g{v}" for v in doubt.labels]
    members: list[list] = [[] for _ in names]
    for k, p in enumerate(doubt.member_class.tolist()):
        members[p].append((str(k // 5), str(k % 5), float(doubt.member_distance[k]), k))
    rng = np.random.default_rng(1)
    cells = (rng.random((256, 7, 7)) > 0.6).astype(np.uint8) * 255  # glyph-like: blocky strokes on black
    base = np.kron(cells, np.ones((1, 4, 4), dtype=np.uint8))[..., None]
    flags = truth_flags(doubt.member_class, true, len(names))
    start = time.perf_counter()
    gallery = build_gallery(names, members, doubt, lambda k: base[k % 256], flags)
    timings["thumbnails_s"] = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        start = time.perf_counter()
        json_path, npz_path = save_gallery(out, gallery)
        timings["save_s"] = time.perf_counter() - start
        start = time.perf_counter()
        review = gallery_html(gallery, top=top)
        timings["review_view_s"] = time.perf_counter() - start
        start = time.perf_counter()
        pages = write_gallery_pages(gallery, out / "pages", "classes", "every class")
        timings["full_list_s"] = time.perf_counter() - start
        sizes = {"gallery_json_bytes": json_path.stat().st_size, "thumbs_npz_bytes": npz_path.stat().st_size,
                 "review_view_bytes": len(review.encode("utf-8")),
                 "full_list_bytes": sum(p.stat().st_size for p in pages), "pages": len(pages),
                 "largest_page_bytes": max(p.stat().st_size for p in pages)}
    return {"classes": len(names), "task_classes": len(keys), "tasks": len(offsets) - 1, "dim": dim, "top": top,
            "page_size": PAGE_SIZE, **{k: round(v, 3) for k, v in timings.items()},
            "total_s": round(sum(timings.values()), 3), **sizes,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "doubt_precision_top10": precision_at(doubt.score, flags.wrong, 0.1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[10000])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--recurrence", type=int, default=5)
    parser.add_argument("--top", type=int, default=50)
    args = parser.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    for classes in args.classes:
        row = measure(classes, args.dim, args.recurrence, args.top)
        row["machine"] = f"{platform.machine()}, {platform.processor() or 'cpu'}"
        print(json.dumps(row), flush=True)
        results[str(classes)] = row
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
