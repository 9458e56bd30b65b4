"""``dataset=tasks``: every step on a locally labelled task collection, through the pipeline and one by one."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from mela.cli import main
from mela.config import compose_config
from mela.data.task_dataset import TaskSplitSettings
from mela.data.tasks import load_tasks
from mela.errors import MelaError
from mela.steps import meta_eval, sup_baseline
from mela.workspace import saves_dir

FAST = ["learn_meta_repr.epochs=1", "learn_meta_repr.lr_decay_epochs=1", "learn_labeler.epochs=1",
        "learn_labeler.lr_decay_epochs=1", "learn_labeler.K=40", "sup_baseline.epochs=1",
        "sup_baseline.lr_decay_epochs=1", "fine_tune.epochs=1", "val_db_size=10", "test_db_size=20",
        "meta_eval.n_queries=5", "n_ways=4", "n_queries=2", "tasks_holdout=0.15", "tasks_val=0.1"]


def pipeline_args(collection: Path, run_name: str, *extra: str) -> list[str]:
    return ["pipeline", "dataset=tasks", f"tasks_path={collection}", f"run_name={run_name}", "model=convnet4",
            "progress=false", "tensorboard=false", "plots=false", *FAST, *extra]


def test_the_pipeline_on_a_task_collection_writes_global_labels_and_held_out_rows(collection_dir, workspace,
                                                                                   capsys) -> None:
    assert main(pipeline_args(collection_dir, "tk")) == 0
    out = capsys.readouterr().out
    results = json.loads(Path(out.strip().splitlines()[-1]).read_text())
    assert {r["model"] for r in results["rows"]} == {"meta_repr", "mela", "mela_finetune", "oracle"}
    assert [r.get("column") for r in results["rows"]] == ["held-out tasks", "held-out tasks 1-shot"] * 4
    assert all(0.0 < r["acc"] <= 100.0 and r["ci"] >= 0 for r in results["rows"])
    # The table shows both views of the held-out tasks, half of each class as support first, then one per class.
    header = next(line for line in out.splitlines() if line.startswith("model "))
    assert header.split()[1:] == ["held-out", "tasks", "acc", "(95%", "CI)", "held-out", "tasks", "1-shot", "acc",
                                  "(95%", "CI)"]
    # Every model's 1-shot view used the same support images (one seed for all): the aggregate may pair them.
    one_shot = [results["task_sets"][f"{m}/held-out tasks 1-shot"] for m in ("meta_repr", "mela", "oracle")]
    assert one_shot[0] == one_shot[1] == one_shot[2] and one_shot[0]["support_per_class"] == 1
    assert "support_per_class" not in results["task_sets"]["mela/held-out tasks"]
    meta_eval_log = (saves_dir(workspace) / "meta_eval" / "tk_mela" / "log.txt").read_text()
    assert "held-out tasks 1-shot (9 of the collection, each evaluated inside itself, 1 image per class" in \
        meta_eval_log

    run_dir = saves_dir(workspace) / "learn_labeler" / "tk"
    collection = load_tasks(collection_dir)
    with open(run_dir / "global_labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    # One row per task class of the training tasks; every class's global class is one of global_classes.json.
    classes = json.loads((run_dir / "global_classes.json").read_text())
    assert len(rows) == sum(entry["size"] for entry in classes.values()) > 0
    assert {r["global_class"] for r in rows} == set(classes)
    assert all(float(r["distance"]) >= 0 for r in rows)
    members = {(task, local) for entry in classes.values() for task, local in entry["members"]}
    assert members == {(r["task"], r["local_label"]) for r in rows}
    # The labeler's ARI in the report is the ARI of global_labels.csv against truth.csv, computed here.
    with open(collection_dir / "truth.csv", newline="") as handle:
        truth = {(r["task"], r["local_label"]): r["global_label"] for r in csv.DictReader(handle)}
    ari = adjusted_rand_score([truth[(r["task"], r["local_label"])] for r in rows], [r["global_class"] for r in rows])
    assert results["labeler"]["ari"] == pytest.approx(ari)
    assert len({r["task"] for r in rows}) < collection.n_tasks  # held-out and val tasks are not labelled

    # The held-out evaluation is the same for a rerun: it reuses every step and gives the same table.
    assert main(pipeline_args(collection_dir, "tk")) == 0
    assert capsys.readouterr().out.count("already finished") == 4


def test_the_results_table_puts_both_held_out_views_first_one_line_per_model() -> None:
    from mela.steps.pipeline import results_table

    rows = [{"model": m, "shots": shots, "column": column, "acc": acc, "ci": 1.0}
            for m, base in (("meta_repr", 90.0), ("mela", 95.0))
            for shots, column, acc in ((1, "glyphs 1-shot", base - 5), (None, "held-out tasks", base),
                                       (1, "held-out tasks 1-shot", base - 10))]
    lines = results_table(rows).splitlines()
    assert [" ".join(c.split()) for c in lines[0].split("acc (95% CI)")] == [
        "model held-out tasks", "held-out tasks 1-shot", "glyphs 1-shot", ""]
    assert lines[2].split() == ["meta_repr", "90.00", "±", "1.00", "80.00", "±", "1.00", "85.00", "±", "1.00"]
    assert lines[3].split()[1::3] == ["95.00", "85.00", "90.00"]


@pytest.mark.slow
def test_without_truth_the_oracle_is_skipped_the_labeler_is_not_scored_and_eval_dataset_adds_rows(
        collection_dir, synthetic_dataset, tmp_path, workspace, capsys) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(collection_dir, bare)
    (bare / "truth.csv").unlink()
    assert main(pipeline_args(bare, "nt", f"eval_dataset={synthetic_dataset}")) == 0
    out = capsys.readouterr().out
    assert "sup_baseline: skipped" in out
    results = json.loads(Path(out.strip().splitlines()[-1]).read_text())
    assert {r["model"] for r in results["rows"]} == {"meta_repr", "mela", "mela_finetune"}
    columns = {(r["model"], r.get("column")) for r in results["rows"]}
    assert columns == {(m, c) for m in ("meta_repr", "mela", "mela_finetune")
                       for c in ("held-out tasks", "held-out tasks 1-shot", f"{synthetic_dataset} 1-shot",
                                 f"{synthetic_dataset} 5-shot")}
    assert all(25.0 < r["acc"] <= 100.0 for r in results["rows"]  # 4-way chance is 25 %
               if r["column"].startswith(synthetic_dataset))
    assert results["labeler"]["true_classes"] is None and results["labeler"]["ari"] is None
    assert "global classes found (no true labels" in out
    with pytest.raises(MelaError, match="sup_baseline trains on the true global labels"):
        cfg = compose_config("sup_baseline", ["dataset=tasks", f"tasks_path={bare}", "model=convnet4"])
        sup_baseline.run(sup_baseline.read_settings(cfg))


def test_meta_eval_refuses_an_eval_dataset_whose_images_differ_from_the_collections(collection_dir, workspace
                                                                                   ) -> None:
    from mela.data.registry import open_dataset
    from mela.data.task_dataset import open_task_dataset

    cfg = compose_config("meta_eval", ["dataset=tasks", f"tasks_path={collection_dir}", "model=convnet4",
                                       "eval_dataset=glyphs"])
    settings = meta_eval.read_settings(cfg)
    assert settings.eval_dataset.name == "glyphs"
    data = open_task_dataset(str(collection_dir))
    with pytest.raises(MelaError, match="eval_dataset=glyphs has images of shape"):
        meta_eval.check_data(settings, data, open_dataset("glyphs", workspace))
    with pytest.raises(MelaError, match="tasks_holdout=0 holds no task out"):
        meta_eval.check_data(settings, open_task_dataset(str(collection_dir),
                                                         settings=TaskSplitSettings(0.0, 0.1, 0)))


def test_dataset_tasks_without_tasks_path_and_tasks_path_without_dataset_tasks_are_one_line_errors() -> None:
    from mela.steps import learn_meta_repr

    with pytest.raises(MelaError, match="dataset=tasks needs tasks_path"):
        learn_meta_repr.read_settings(compose_config("learn_meta_repr", ["dataset=tasks"]))
    with pytest.raises(MelaError, match="set dataset=tasks"):
        learn_meta_repr.read_settings(compose_config("learn_meta_repr", ["dataset=glyphs", "tasks_path=/x"]))


def test_the_three_task_shares_are_disjoint_cover_the_collection_and_follow_the_seed(collection_dir) -> None:
    from mela.data.task_dataset import open_task_dataset

    data = open_task_dataset(str(collection_dir), settings=TaskSplitSettings(0.15, 0.1, 0))
    parts = [data.indices[p] for p in ("train", "val", "test")]
    assert sum(len(p) for p in parts) == 60 and len(np.unique(np.concatenate(parts))) == 60
    assert [len(p) for p in parts] == [46, 5, 9]
    again = open_task_dataset(str(collection_dir), settings=TaskSplitSettings(0.15, 0.1, 0))
    other = open_task_dataset(str(collection_dir), settings=TaskSplitSettings(0.15, 0.1, 1))
    assert all(np.array_equal(again.indices[p], data.indices[p]) for p in ("train", "val", "test"))
    assert not np.array_equal(other.indices["test"], data.indices["test"])
    assert data.identity == again.identity != other.identity
    # Pixel statistics are the images' own, in [0, 1] units.
    pixels = data.collection.images.astype(np.float64) / 255
    assert data.mean[0] == pytest.approx(pixels.mean()) and data.std[0] == pytest.approx(pixels.std())
    # Each part's tasks are the collection's tasks, untouched.
    test = data.tasks("test")
    first = int(data.indices["test"][0])
    assert test.task_ids[0] == data.collection.task_ids[first]
    assert [list(r) for r in test.task_classes(0)] == [list(r) for r in data.collection.task_classes(first)]


def test_a_bad_task_stops_a_step_with_one_line_unless_skipped_and_then_the_log_counts_it(collection_dir, tmp_path,
                                                                                       workspace) -> None:
    from mela.steps import learn_meta_repr

    bad = tmp_path / "bad"
    shutil.copytree(collection_dir, bad)
    (bad / "truth.csv").unlink()
    lonely = bad / "zz_lonely" / "only"
    lonely.mkdir(parents=True)
    shutil.copy(next((collection_dir).glob("*/*/*.png")), lonely / "x.png")
    base = ["dataset=tasks", f"tasks_path={bad}", "model=convnet4", "epochs=1", "lr_decay_epochs=1",
            "progress=false", "val_shots=[1]", "val_n_shots=1", "test_db_size=5", "plots=false"]
    with pytest.raises(MelaError, match="task 'zz_lonely'.*skip_bad_tasks"):
        learn_meta_repr.run(learn_meta_repr.read_settings(compose_config("learn_meta_repr", [*base, "run_name=a"])))
    result = learn_meta_repr.run(learn_meta_repr.read_settings(compose_config(
        "learn_meta_repr", [*base, "run_name=b", "skip_bad_tasks=true"])))
    log = (Path(result["run_dir"]) / "log.txt").read_text()
    assert "60 tasks (skipped: too_few_classes 1)" in log
    assert "skipped task 'zz_lonely' (too_few_classes)" in log


@pytest.mark.parametrize("name", ["pipeline", "pipeline_paper", "pipeline_tasks"])
def test_every_shipped_pipeline_config_composes_and_reads_into_settings_for_every_step(name, workspace) -> None:
    from mela.config.compose import default_config
    from mela.config.settings import settings_of
    from mela.steps import pipeline

    extra = ["tasks_path=/nowhere"] if name == "pipeline_tasks" else []
    settings = pipeline.read_settings(compose_config(name, extra))
    assert set(settings.steps) == {"learn_meta_repr", "learn_labeler", "fine_tune", "sup_baseline"}
    # Every pipeline key of the settings registry is set in each pipeline config, so none falls back silently.
    assert {s.name for s in settings_of(name)} == set(default_config(name))
    if name == "pipeline_tasks":
        labeler = settings.steps["learn_labeler"].labeler
        assert (labeler.K, labeler.merge_factor, labeler.merge_risk) == (400, 20.0, 1.0)
        # The README's `mela pipeline dataset=tasks tasks_path=...` gets exactly these settings: one default.
        plain = pipeline.read_settings(compose_config("pipeline", ["dataset=tasks", "run_name=same", *extra]))
        settings = pipeline.read_settings(compose_config(name, ["run_name=same", *extra]))
        assert plain.steps == settings.steps
        assert settings.dataset.name == "tasks" and settings.dataset.tasks_path == "/nowhere"
