"""``mela pipeline -m``: a two-seed sweep of a tiny pipeline, its aggregate, resuming, and bad input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from mela.cli import main
from mela.runs.task_results import read_per_task

sys.path.insert(0, str(Path(__file__).parents[1] / "steps"))
from test_pipeline_cli import FAST, write_glyph_slice  # noqa: E402

SAVES = Path("checkpoint") / "label_learn" / "saves"


def run_folders(workspace: Path) -> set[Path]:
    saves = workspace / SAVES
    return {p for step in saves.iterdir() if step.name != "sweeps" for p in step.iterdir() if p.is_dir()}


@pytest.mark.slow
def test_a_two_seed_sweep_makes_two_runs_one_aggregate_and_a_rerun_makes_no_new_run(tmp_path, workspace, capsys):
    npz, split = write_glyph_slice(tmp_path)
    args = ["pipeline", "-m", "seed=0,1", "dataset=custom", f"custom_path={npz}", f"custom_split={split}",
            "image_size=32", "plots=false", *FAST]
    assert main(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    sweep_json = Path(out[-1])
    assert sweep_json.name == "sweep.json" and sweep_json.parent.parent.name == "sweeps"
    assert [p.name for p in sweep_json.parents[1].iterdir()] == [sweep_json.parent.name]  # one sweep folder
    record = json.loads(sweep_json.read_text())
    assert [j["swept"] for j in record["jobs"]] == [{"seed": "0"}, {"seed": "1"}]
    assert [j["status"] for j in record["jobs"]] == ["finished", "finished"]
    pipelines = [Path(j["run_dir"]) for j in record["jobs"]]
    assert sorted(p.name for p in (workspace / SAVES / "pipeline").iterdir()) == sorted(p.name for p in pipelines)
    results = [json.loads((p / "results.json").read_text()) for p in pipelines]
    arrays = [read_per_task(p / "task_accuracies.npz") for p in pipelines]

    # Every test task's accuracy is kept; they average to the reported mean exactly.
    for result, per_task in zip(results, arrays, strict=True):
        assert len(per_task) == len(result["rows"]) == 8
        for row in result["rows"]:
            values = per_task[f"{row['model']}/{row['shots']}-shot"]
            assert len(values) == 20 and float(values.mean()) == row["acc"]
    assert results[0]["task_sets"] == results[1]["task_sets"]  # the same tasks in both seeds

    (group,) = record["aggregate"]["groups"]
    assert record["aggregate"]["swept"] == []
    mela_5 = next(a for a in group["accuracy"] if (a["model"], a["column"]) == ("mela", "5-shot"))
    accs = [next(r["acc"] for r in res["rows"] if (r["model"], r["shots"]) == ("mela", 5)) for res in results]
    assert mela_5["runs"] == 2
    assert mela_5["mean"] == pytest.approx(np.mean(accs)) and mela_5["sd"] == pytest.approx(np.std(accs, ddof=1))
    assert len(group["pairs"]) == 12  # 6 pairs of 4 models, 2 columns
    pair = next(p for p in group["pairs"] if (p["first"], p["second"], p["column"]) == ("meta_repr", "mela", "1-shot"))
    assert pair["paired"] and [r["run"] for r in pair["per_run"]] == ["seed 0", "seed 1"]
    for run, per_task in zip(pair["per_run"], arrays, strict=True):
        interval = stats.ttest_rel(per_task["mela/1-shot"], per_task["meta_repr/1-shot"]).confidence_interval()
        assert run["mean"] == pytest.approx((interval.low + interval.high) / 2)
        assert run["ci"] == pytest.approx((interval.high - interval.low) / 2)
    pooled = (per_task_diff(arrays[0]) + per_task_diff(arrays[1])) / 2
    assert pair["pooled"]["mean"] == pytest.approx(pooled.mean()) and pair["pooled"]["tasks"] == 20
    markdown = (sweep_json.parent / "sweep.md").read_text()
    assert "| mela − meta_repr | 1-shot | seed 0: " in markdown and "pooled over seeds" in markdown

    # The same command again: every job reused, no new run folder, the same aggregate.
    before = run_folders(workspace)
    assert main(args) == 0
    again = capsys.readouterr().out
    assert again.count("already finished") == 2 and "[pipeline]" not in again
    assert run_folders(workspace) == before
    assert json.loads(sweep_json.read_text())["aggregate"] == record["aggregate"]
    assert [j["status"] for j in json.loads(sweep_json.read_text())["jobs"]] == ["reused", "reused"]

    # mela report over the sweep folder shows the aggregate.
    assert main(["report", str(sweep_json.parent), "--out", str(tmp_path / "report"), "--no-plots"]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "## Aggregate over seeds and paired comparisons" in report
    assert "| mela − meta_repr | 1-shot | seed 0: " in report


def per_task_diff(per_task: dict[str, np.ndarray]) -> np.ndarray:
    return per_task["mela/1-shot"] - per_task["meta_repr/1-shot"]


@pytest.mark.parametrize(("sweep", "message"), [
    (["nokey=1,2"], "swept key 'nokey' is not a setting of mela pipeline"),
    (["learn_labeler.nokey=1,2"], "swept key 'learn_labeler.nokey' is not a setting of mela learn-labeler"),
    (["seed=0,,1"], "'seed=0,,1' does not parse"),
    (["learn_labeler.K=40,abc"], "sweep job 1 (learn_labeler.K=abc): pipeline section learn_labeler: K must be"),
    (["n_shots=1,50"], "sweep job 1 (n_shots=50): learn_meta_repr's training tasks"),
    (["seed=range(0,101)"], "101 jobs, more than 100: add --yes"),
    (["seed=0,1,2", "--max-jobs", "2"], "3 jobs, more than 2"),
])
def test_bad_sweeps_are_one_line_before_any_work(sweep, message, tmp_path, workspace, capsys):
    npz, split = write_glyph_slice(tmp_path)
    args = ["pipeline", "-m", "dataset=custom", f"custom_path={npz}", f"custom_split={split}", "image_size=32",
            *FAST, *sweep]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (workspace / SAVES).exists()  # nothing was started


def test_a_value_list_without_m_says_how_to_sweep_it(workspace, capsys):
    assert main(["pipeline", "seed=0,1"]) == 2
    assert "to run each value, add -m" in capsys.readouterr().err
