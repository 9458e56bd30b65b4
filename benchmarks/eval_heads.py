"""Test-time logistic regression: mela's batched exact solver against one scikit-learn fit per task.

The reference spends almost all of meta_eval in per-task scikit-learn fits. This
benchmark times both on the same random unit-norm features (5-way, 1-shot and
5-shot, 15 queries per class), checks they agree, and writes
benchmarks/results/eval_heads.json. Run: python benchmarks/eval_heads.py [--tasks N] [--dim D]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from mela.methods.heads import LogisticRegressionHead

RESULTS = Path(__file__).parent / "results" / "eval_heads.json"


def make_tasks(n_tasks: int, shots: int, dim: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_tasks, 5, dim))
    support = centres[:, :, None] + 0.8 * rng.normal(size=(n_tasks, 5, shots, dim))
    query = centres[:, :, None] + 0.8 * rng.normal(size=(n_tasks, 5, 15, dim))
    support = support.reshape(n_tasks, 5 * shots, dim)
    query = query.reshape(n_tasks, 75, dim)
    support /= np.linalg.norm(support, axis=-1, keepdims=True)
    query /= np.linalg.norm(query, axis=-1, keepdims=True)
    labels = np.tile(np.repeat(np.arange(5), shots), (n_tasks, 1))
    return support, labels, query


def time_sklearn(support, labels, query) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    preds = np.stack([LogisticRegression(C=1.0).fit(s, y).predict(q) for s, y, q in zip(support, labels, query,
                                                                                        strict=True)])
    return time.perf_counter() - start, preds


def time_mela(support, labels, query) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    head = LogisticRegressionHead(C=1.0).fit(torch.from_numpy(support), torch.from_numpy(labels), 5)
    preds = head.predict(torch.from_numpy(query)).numpy()
    return time.perf_counter() - start, preds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=600)
    parser.add_argument("--dim", type=int, default=640)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for shots in (1, 5):
        support, labels, query = make_tasks(args.tasks, shots, args.dim)
        sk_times, mela_times = [], []
        for _ in range(args.repeats):
            t_sk, p_sk = time_sklearn(support, labels, query)
            t_mela, p_mela = time_mela(support, labels, query)
            sk_times.append(t_sk)
            mela_times.append(t_mela)
        agreement = float((p_sk == p_mela).mean())
        row = {"shots": shots, "tasks": args.tasks, "dim": args.dim,
               "sklearn_median_s": statistics.median(sk_times), "mela_median_s": statistics.median(mela_times),
               "speedup": statistics.median(sk_times) / statistics.median(mela_times),
               "prediction_agreement": agreement}
        rows.append(row)
        print(json.dumps(row))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": platform.platform(), "torch_threads": torch.get_num_threads(),
                                   "rows": rows}, indent=1))
    print(RESULTS)


if __name__ == "__main__":
    main()
