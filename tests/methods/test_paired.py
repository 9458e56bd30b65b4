"""Paired differences of two models on the same tasks, checked against scipy's paired t-test."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from mela.errors import MelaError
from mela.methods.paired import mean_sd, paired_difference, pooled_difference


def test_the_paired_ci_equals_scipys_paired_t_test_on_the_same_per_task_numbers() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 76, 300) / 75 * 100  # 75 queries per task: accuracies on a grid, as meta_eval's
    b = np.clip(a - 2 + rng.normal(0, 6, 300), 0, 100)
    diff = paired_difference(a, b)
    test = stats.ttest_rel(a, b)
    interval = test.confidence_interval(0.95)
    assert diff.n == 300
    assert diff.mean == pytest.approx((interval.low + interval.high) / 2, rel=1e-12)
    assert diff.ci == pytest.approx((interval.high - interval.low) / 2, rel=1e-12)
    assert diff.mean == pytest.approx(a.mean() - b.mean(), rel=1e-12)


def test_pairing_is_much_tighter_than_the_two_separate_intervals_when_tasks_share_their_difficulty() -> None:
    rng = np.random.default_rng(1)
    difficulty = rng.normal(60, 15, 500)
    a, b = difficulty + rng.normal(1, 2, 500), difficulty + rng.normal(0, 2, 500)
    separate = stats.t.ppf(0.975, 499) * a.std(ddof=1) / np.sqrt(500)
    assert paired_difference(a, b).ci < separate / 4


def test_pooling_runs_on_the_same_tasks_averages_each_task_over_the_runs_first() -> None:
    rng = np.random.default_rng(2)
    diffs = [rng.normal(1, 3, 40) for _ in range(3)]
    pooled = pooled_difference(diffs, same_tasks=True)
    per_task = (diffs[0] + diffs[1] + diffs[2]) / 3
    interval = stats.ttest_1samp(per_task, 0.0).confidence_interval(0.95)
    assert pooled.n == 40
    assert pooled.mean == pytest.approx(np.mean([d.mean() for d in diffs]), rel=1e-12)
    assert pooled.ci == pytest.approx((interval.high - interval.low) / 2, rel=1e-12)


def test_pooling_runs_on_different_tasks_takes_every_task_once() -> None:
    diffs = [np.array([1.0, 2.0, 3.0]), np.array([5.0, 7.0])]
    pooled = pooled_difference(diffs, same_tasks=False)
    assert (pooled.mean, pooled.n) == (pytest.approx(3.6), 5)


def test_arrays_of_different_lengths_cannot_be_paired() -> None:
    with pytest.raises(MelaError, match="one length"):
        paired_difference(np.ones(3), np.ones(4))


def test_mean_sd_is_the_sample_standard_deviation_and_nan_for_one_value() -> None:
    assert mean_sd([1.0, 2.0, 4.0]) == (pytest.approx(7 / 3), pytest.approx(np.std([1, 2, 4], ddof=1)))
    assert np.isnan(mean_sd([3.0])[1])
