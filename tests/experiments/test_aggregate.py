"""The aggregate over runs: means over seeds, paired differences, refusals, and settings that vary."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from mela.experiments.aggregate import Record, Unit, aggregate, aggregate_tables, task_set_difference

TASKS = {"dataset": "glyphs", "split": "test", "n_ways": 5, "n_shots": 1, "n_queries": 15, "n_tasks": 50,
         "scheme": "evaluation_tasks", "digest": "abc"}


def unit(name: str, seed: int, models: dict[str, np.ndarray], tasks: dict | None = None, k: int = 400) -> Unit:
    records = {(m, "1-shot"): Record(float(a.mean()), 1.0, a, dict(tasks or TASKS)) for m, a in models.items()}
    return Unit(name, name, seed, {"seed": seed, "run_name": name, "learn_labeler": {"K": k}}, records)


def accuracies(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.uniform(40, 90, 50)
    return {"meta_repr": base, "mela": base + rng.normal(2, 3, 50)}


def test_two_seeds_give_the_mean_the_sd_and_the_paired_difference_of_each_run_and_pooled() -> None:
    runs = [unit("a", 0, accuracies(0)), unit("b", 1, accuracies(1))]
    (group,) = aggregate(runs)["groups"]
    mela = next(a for a in group["accuracy"] if a["model"] == "mela")
    means = [runs[0].records[("mela", "1-shot")].acc, runs[1].records[("mela", "1-shot")].acc]
    assert mela["mean"] == pytest.approx(np.mean(means)) and mela["sd"] == pytest.approx(np.std(means, ddof=1))
    (pair,) = group["pairs"]
    assert (pair["first"], pair["second"], pair["paired"]) == ("meta_repr", "mela", True)
    for run, seed in zip(pair["per_run"], (0, 1), strict=True):
        a = accuracies(seed)
        interval = stats.ttest_rel(a["mela"], a["meta_repr"]).confidence_interval()
        assert run["ci"] == pytest.approx((interval.high - interval.low) / 2)
    diffs = [accuracies(s)["mela"] - accuracies(s)["meta_repr"] for s in (0, 1)]
    interval = stats.ttest_1samp((diffs[0] + diffs[1]) / 2, 0).confidence_interval()
    assert pair["pooled"]["mean"] == pytest.approx(np.mean([d.mean() for d in diffs]))
    assert pair["pooled"]["ci"] == pytest.approx((interval.high - interval.low) / 2)
    assert pair["pooled"]["same_tasks"] and pair["pooled"]["tasks"] == 50
    across = stats.ttest_1samp([d.mean() for d in diffs], 0).confidence_interval()  # the seeds as the sample
    assert pair["ci_over_runs"] == pytest.approx((across.high - across.low) / 2)


def test_models_evaluated_on_different_tasks_are_never_paired_and_the_table_says_so() -> None:
    other_tasks = {**TASKS, "digest": "def"}
    run = unit("a", 0, accuracies(0))
    run.records[("mela", "1-shot")] = Record(70.0, 1.0, accuracies(0)["mela"], other_tasks)
    (group,) = aggregate([run])["groups"]
    (pair,) = group["pairs"]
    assert not pair["paired"] and "different tasks (digest: abc vs def)" in pair["reason"]
    _, _, rows = aggregate_tables(aggregate([run]))[1]
    assert rows == [["mela − meta_repr", "1-shot", "not paired: evaluated on different tasks (digest: abc vs def)",
                     "", "", ""]]


def test_a_run_without_per_task_accuracies_is_not_paired() -> None:
    run = unit("a", 0, accuracies(0))
    run.records[("mela", "1-shot")] = Record(70.0, 1.0, None, None)
    (pair,) = aggregate([run])["groups"][0]["pairs"]
    assert not pair["paired"] and "0.3.0" in pair["reason"]


def test_task_sets_differing_in_any_field_are_different_tasks() -> None:
    assert task_set_difference(TASKS, dict(TASKS)) is None
    assert "n_tasks: 50 vs 60" in task_set_difference(TASKS, {**TASKS, "n_tasks": 60})


def test_a_setting_swept_besides_the_seed_makes_groups_and_an_accuracy_against_value_table() -> None:
    runs = [unit(f"r{k}{s}", s, accuracies(s + k), k=k) for k in (300, 400) for s in (0, 1)]
    agg = aggregate(runs)
    assert agg["swept"] == ["learn_labeler.K"]
    assert [g["settings"] for g in agg["groups"]] == [{"learn_labeler.K": "300"}, {"learn_labeler.K": "400"}]
    assert all(len(g["runs"]) == 2 for g in agg["groups"])
    title, header, rows = aggregate_tables(agg)[2]
    assert title.startswith("Accuracy against learn_labeler.K") and header[0] == "learn_labeler.K"
    mean_300 = np.mean([runs[i].records[("mela", "1-shot")].acc for i in (0, 1)])
    assert rows[1][:4] == ["300", "", "mela", "1-shot"] and rows[1][4].startswith(f"{mean_300:.2f} ± ")


def test_accuracy_against_a_swept_value_is_drawn_as_a_png(tmp_path) -> None:
    from mela.experiments.aggregate import plot_against, plot_name

    runs = [unit(f"r{k}{s}", s, accuracies(s + k), k=k) for k in (300, 400) for s in (0, 1)]
    path = plot_against(aggregate(runs), "learn_labeler.K", tmp_path / plot_name("learn_labeler.K"))
    assert path.name == "accuracy_vs_learn_labeler.K.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_two_held_out_views_are_aggregated_and_paired_each_in_its_own_column_before_the_others() -> None:
    half = {"dataset": "tasks:x", "split": "test", "n_tasks": 9, "seed": 0, "scheme": "support_query", "digest": "d"}
    one = {**half, "support_per_class": 1}
    rng = np.random.default_rng(3)
    records = {}
    for model, shift in (("meta_repr", 0.0), ("mela", 4.0)):
        for column, tasks in (("glyphs 5-shot", TASKS), ("held-out tasks 1-shot", one), ("held-out tasks", half)):
            a = rng.uniform(40, 90, 9) + shift
            records[(model, column)] = Record(float(a.mean()), 1.0, a, dict(tasks))
    (group,) = aggregate([Unit("p", "p", 0, {"seed": 0}, records)])["groups"]
    assert [a["column"] for a in group["accuracy"] if a["model"] == "mela"] == [
        "held-out tasks", "held-out tasks 1-shot", "glyphs 5-shot"]
    pairs = {p["column"]: p for p in group["pairs"]}
    assert set(pairs) == {"held-out tasks", "held-out tasks 1-shot", "glyphs 5-shot"}
    assert all(p["paired"] for p in pairs.values())
    column = "held-out tasks 1-shot"
    diff = records[("mela", column)].per_task - records[("meta_repr", column)].per_task
    assert pairs["held-out tasks 1-shot"]["pooled"]["mean"] == pytest.approx(diff.mean())
    assert task_set_difference(half, one) == "evaluated on different tasks (support_per_class: None vs 1)"
