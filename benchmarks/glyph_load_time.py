"""How long loading the shipped glyphs takes (first split: decompression; later splits: cached).

Writes benchmarks/results/glyph_load_time.json with the median of fresh-process-like loads.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from mela.data import glyphs

RESULTS = Path(__file__).parent / "results" / "glyph_load_time.json"


def main(repeats: int = 7) -> None:
    first, later = [], []
    for _ in range(repeats):
        glyphs.load_arrays.cache_clear()
        start = time.perf_counter()
        glyphs.load(Path("."), "train")
        first.append(time.perf_counter() - start)
        start = time.perf_counter()
        glyphs.load(Path("."), "test")
        later.append(time.perf_counter() - start)
    result = {"repeats": repeats, "first_split_median_s": round(statistics.median(first), 4),
              "later_split_median_s": round(statistics.median(later), 4),
              "file_bytes": glyphs.asset_path().stat().st_size}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
