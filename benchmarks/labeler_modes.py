"""The labeler's two modes on the same task pile: reference (faithful) against improved (default).

Takes a finished learn_meta_repr run (its model.pt), computes the task keys of the
data set's training pile exactly as learn_labeler does, clusters them with both
modes and several K, and writes benchmarks/results/labeler_modes.json.

    python benchmarks/labeler_modes.py --K 200 400 1000 \
        --model $WORKSPACE/checkpoint/label_learn/saves/learn_meta_repr/<run>
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import mela
from mela.errors import MelaError
from mela.methods.labeler import LabelerConfig, clustering_report

RESULTS = Path(__file__).parent / "results" / "labeler_modes.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a learn_meta_repr run folder or model.pt")
    parser.add_argument("--dataset", default="glyphs")
    parser.add_argument("--K", type=int, nargs="+", default=[400, 1000])
    parser.add_argument("--n-ways", type=int, default=5)
    parser.add_argument("--images-per-class", type=int, default=10, help="n_shots + n_queries of the pile")
    args = parser.parse_args()
    path = Path(args.model)
    path = path / "model.pt" if path.is_dir() else path
    dataset = mela.open_dataset(args.dataset)
    tasks = mela.label_pile(dataset, n_ways=args.n_ways, images_per_class=args.images_per_class)
    model = mela.load_model(path)
    features = mela.task_features(model, dataset, tasks)
    true = dataset.split("train").labels[tasks[:, :, 0]]
    rows = []
    for mode in ("reference", "improved"):
        for k in args.K:
            start = time.perf_counter()
            try:
                labels = mela.infer_global_labels(features, labeler=LabelerConfig(K=k, mode=mode, count_check=False))
                report = clustering_report(labels.assigned, true)
                passes = len(labels.passes)
            except MelaError as exc:
                report, passes = {"error": str(exc)}, 0
            row = {"mode": mode, "K": k, "passes": passes, "seconds": round(time.perf_counter() - start, 2),
                   **report}
            rows.append(row)
            print(json.dumps(row))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"model": str(path), "dataset": args.dataset, "tasks": int(len(tasks)),
                                   "rows": rows}, indent=1))
    print(RESULTS)


if __name__ == "__main__":
    main()
