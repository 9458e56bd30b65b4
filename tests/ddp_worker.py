"""What each process of the 2-process checks in test_distributed.py runs (under torchrun, gloo on the CPU).

``python -m torch.distributed.run --nproc_per_node 2 tests/ddp_worker.py OUT.json`` evaluates a fixed seeded
model with the evaluation sharded over the ranks, and asks the CLI for a step whose tasks per step the ranks
cannot share; rank 0 writes what it saw to OUT.json. :func:`fixed_evaluation` is also what the test computes in
one process, to compare.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `tests.conftest` from the repository root

from mela import distributed  # noqa: E402
from mela.data.samplers import TaskShape, evaluation_tasks  # noqa: E402
from mela.data.tasks import from_pairs  # noqa: E402
from mela.methods.evaluator import (  # noqa: E402
    EvalProtocol,
    evaluate_collection_features,
    evaluate_model,
    extract_features,
    task_accuracies,
)
from mela.models.feature_model import build_model  # noqa: E402
from tests.conftest import make_synthetic_split  # noqa: E402


def fixed_evaluation() -> dict:
    """Accuracies of a fixed seeded convnet4 on a synthetic split: small batches and chunks, so that every rank
    gets several; a task collection evaluated task by task; evaluate_model as the steps call it."""
    torch.manual_seed(7)
    model = build_model("convnet4", 1, None).eval()
    split = make_synthetic_split(8, 12, 3)
    device = torch.device("cpu")
    features = extract_features(model, split.images, (0.35,), (0.4,), device, batch_size=16)
    item = torch.nn.functional.normalize(features[split.item_images()].double(), dim=-1)
    shape = TaskShape(4, 2, 3)
    (_, tasks), = evaluation_tasks(split, shape, 21)
    per_task = task_accuracies(item, tasks, shape.n_shots, EvalProtocol().head_factory(), chunk=4)
    rng = np.random.default_rng(5)
    pairs = []
    for _ in range(9):
        classes = rng.choice(8, 3, replace=False)
        rows = np.concatenate([rng.choice(np.flatnonzero(split.labels == c), 4, replace=False) for c in classes])
        pairs.append((split.images[rows], np.repeat(classes, 4)))
    collection = from_pairs(pairs)
    col_features = extract_features(model, collection.images, (0.35,), (0.4,), device, batch_size=8)
    col = evaluate_collection_features(col_features, collection, EvalProtocol(balanced=True).head_factory(), 2)
    full = evaluate_model(model, split, [shape], 21, EvalProtocol(), (0.35,), (0.4,), device)[0].overall
    return {"features_sum": float(features.double().sum()), "per_task": per_task.tolist(),
            "collection_acc": col.accuracy.acc, "collection_tasks": col.accuracy.n_tasks,
            "model_acc": full.acc, "model_ci": full.ci}


def refused_tasks_per_step(data_args: list[str]) -> tuple[int, list[str]]:
    """The CLI's exit code and error lines for tasks_per_step=3 on this world of processes."""
    from mela.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["learn-meta-repr", *data_args, "model=convnet4", "n_ways=3", "n_shots=2", "n_queries=2",
                     "tasks_per_step=3", "device=cpu"])
    return code, err.getvalue().strip().splitlines()


if __name__ == "__main__":
    distributed.init_from_env("cpu")
    seen = {"world_size": distributed.world_size(), **fixed_evaluation()}
    seen["refusal_code"], seen["refusal_lines"] = refused_tasks_per_step(sys.argv[2:])
    every = distributed.all_gather_object(seen)
    if distributed.is_main():
        Path(sys.argv[1]).write_text(json.dumps({"ranks": every}))
    distributed.shutdown()
