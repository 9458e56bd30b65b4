"""The labeler's two modes on the same task pile: reference (faithful) against improved (default).

Takes a finished learn_meta_repr run (its model.pt), computes the task keys of the
data set's training pile exactly as learn_labeler does, clusters them with both
modes and several K, and writes benchmarks/results/labeler_modes.json.

    python benchmarks/labeler_modes.py n_queries=5 --K 200 400 1000 \
        --model $WORKSPACE/checkpoint/label_learn/saves/learn_meta_repr/<run>
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mela.config import compose_config
from mela.data.registry import get_dataset_spec, load_split
from mela.device import pick_device
from mela.errors import MelaError
from mela.engine.checkpoint import load_feature_model
from mela.methods.labeler import (
    LabelerConfig,
    clustering_report,
    fit_centroids,
    label_tasks,
    same_class_key_distance,
    task_keys,
)
from mela.steps.learn_labeler import labeling_tasks, pile_features

RESULTS = Path(__file__).parent / "results" / "labeler_modes.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a learn_meta_repr run folder or model.pt")
    parser.add_argument("--dataset", default="glyphs")
    parser.add_argument("--K", type=int, nargs="+", default=[400, 1000])
    parser.add_argument("overrides", nargs="*", help="learn_labeler settings, e.g. n_queries=5")
    args = parser.parse_args()
    cfg = compose_config("learn_labeler", [f"dataset={args.dataset}", *args.overrides])
    path = Path(args.model)
    path = path / "model.pt" if path.is_dir() else path
    device = pick_device("auto")
    model, _ = load_feature_model(path, device)
    spec = get_dataset_spec(args.dataset)
    train = load_split(args.dataset, "train", Path("."))
    tasks = labeling_tasks(train, cfg)
    item_features = pile_features(model, train, tasks, spec, device)
    keys, true = task_keys(item_features), train.labels[tasks[:, :, 0]]
    distance = same_class_key_distance(item_features)
    rows = []
    for mode in ("reference", "improved"):
        for k in args.K:
            config = LabelerConfig(K=k, mode=mode)
            start = time.perf_counter()
            try:
                clustering = fit_centroids(keys, config, distance if mode == "improved" else None)
                report = clustering_report(label_tasks(keys, clustering.centroids, mode), true)
                passes = len(clustering.passes)
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
