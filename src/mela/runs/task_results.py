"""The accuracy of every evaluation task, kept beside ``results.json`` so that models can be compared task by task.

An evaluation run (meta_eval, and a pipeline for all its models) writes ``task_accuracies.npz``: one float64
array per result column (``"5-shot"``, ``"held-out tasks"``; a pipeline prefixes the model: ``"mela/5-shot"``),
the accuracy (%) of each task in task order. Each results row names the tasks it was measured on
(``task_set``): the data set identity, split, task shape, count, how tasks are drawn and a digest of their
items. Two arrays may be paired task by task only when their task sets are equal.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from mela.errors import MelaError
from mela.jsonio import replaced_atomically

PER_TASK_FILE = "task_accuracies.npz"
# How meta_eval draws its test tasks; part of every task set, so a change of scheme is never paired.
SHOT_SCHEME = "evaluation_tasks: task i of each group drawn with default_rng(i)"
HELD_OUT_SCHEME = "support_query: each held-out task split with default_rng([seed, task])"


def write_per_task(path: Path, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write ``arrays`` (name -> per-task accuracies) to the .npz ``path``, atomically."""
    with replaced_atomically(path) as tmp:
        np.savez(tmp, **{name: np.asarray(values, dtype=np.float64) for name, values in arrays.items()})
    return path


def read_per_task(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a ``task_accuracies.npz`` ({} when the run wrote none: runs before 0.3.0)."""
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: np.asarray(npz[name], dtype=np.float64) for name in npz.files}
    except (OSError, ValueError) as exc:
        raise MelaError(f"{path} is not a readable .npz ({exc}); delete it and rerun the evaluation") from exc


def model_tasks(model: str, evaluation: Mapping) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """A pipeline's entries for one evaluated ``model``: its per-task arrays and task sets keyed
    ``"<model>/<column>"``, read from its meta_eval run (``evaluation`` is that run's done.json)."""
    from mela.reporting.columns import row_column

    arrays = read_per_task(Path(str(evaluation.get("run_dir", ""))) / PER_TASK_FILE)
    out_arrays, task_sets = {}, {}
    for row in evaluation.get("rows", []):
        column = row_column(row)
        if column in arrays and row.get("task_set"):
            out_arrays[f"{model}/{column}"] = arrays[column]
            task_sets[f"{model}/{column}"] = dict(row["task_set"])
    return out_arrays, task_sets
