"""Paired comparisons of two models evaluated on the same tasks: pure statistics on per-task accuracies.

When two models are scored on identical test tasks, the per-task difference removes the tasks' own difficulty
(shared by both models), so its confidence interval is much tighter than the two models' separate intervals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from mela.errors import MelaError


@dataclass(frozen=True)
class Difference:
    """Mean of the per-task differences (points of accuracy), the half-width of its CI, and the number of tasks."""

    mean: float
    ci: float
    n: int


def t_interval(values: np.ndarray, confidence: float = 0.95) -> Difference:
    """Mean and Student-t half-width of ``values`` (NaN half-width below two values)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return Difference(float("nan"), float("nan"), 0)
    if len(values) < 2:
        return Difference(float(values.mean()), float("nan"), 1)
    half = stats.t.ppf(0.5 + confidence / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return Difference(float(values.mean()), float(half), len(values))


def paired_difference(a: np.ndarray, b: np.ndarray, confidence: float = 0.95) -> Difference:
    """``a - b`` task by task: the mean difference and its paired-t confidence interval."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise MelaError(f"paired accuracies must be two 1-d arrays of one length, got shapes {a.shape} and {b.shape}")
    return t_interval(a - b, confidence)


def pooled_difference(differences: Sequence[np.ndarray], same_tasks: bool, confidence: float = 0.95) -> Difference:
    """The paired difference pooled over runs (seeds), each run's per-task differences in ``differences``.

    ``same_tasks`` (every run scored the same tasks in the same order): each task's difference is averaged over
    the runs first, then the t interval runs over tasks, so no task counts twice. Otherwise the runs' tasks are
    different draws and are pooled as they are. Both give the mean of the runs' mean differences when the runs
    have equally many tasks.
    """
    if not differences:
        return Difference(float("nan"), float("nan"), 0)
    if same_tasks:
        lengths = {len(d) for d in differences}
        if len(lengths) != 1:
            raise MelaError("same_tasks needs runs with equally many tasks")
        return t_interval(np.mean(np.stack(differences), axis=0), confidence)
    return t_interval(np.concatenate(differences), confidence)


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN for fewer than two values)."""
    array = np.asarray(values, dtype=np.float64)
    if len(array) == 0:
        return float("nan"), float("nan")
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else float("nan")
