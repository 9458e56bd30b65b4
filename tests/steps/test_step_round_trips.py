"""Train, checkpoint, resume and evaluate round trips of the steps on a tiny synthetic data set."""

from __future__ import annotations

import json

import numpy as np
import pytest
from omegaconf import OmegaConf

from mela.config import compose_config
from mela.engine.checkpoint import load_checkpoint
from mela.errors import MelaError
from mela.steps import learn_labeler, learn_meta_repr, meta_eval, sup_baseline
from mela.workspace import saves_dir

TINY = ["model=convnet4", "n_ways=4", "n_shots=2", "n_queries=3", "test_db_size=20", "progress=false",
        "hflip=false", "val_shots=[1,2]", "val_n_shots=2", "val_n_ways=4"]


def run_step(module, cfg):
    """What the CLI does: read the composed config into the step's settings, then run it."""
    return module.run(module.read_settings(cfg))


def tiny_config(step, dataset, *extra):
    shared = TINY
    if step == "learn_labeler":
        shared = [o.replace("model=", "train_model=") for o in TINY] + ["label_recovery_model=convnet4"]
    if step == "meta_eval":
        shared = [o for o in TINY if o.split("=")[0] in ("model", "n_ways", "n_queries", "test_db_size", "progress")]
    return compose_config(step, [f"dataset={dataset}", *shared, *extra])


def test_meta_repr_trains_checkpoints_and_resumes_where_it_stopped(synthetic_dataset, workspace):
    first = run_step(learn_meta_repr, tiny_config("learn_meta_repr", synthetic_dataset, "epochs=1", "run_name=r1",
                                            "lr_decay_epochs=1"))
    run_dir = saves_dir(workspace) / "learn_meta_repr" / "r1"
    assert first["run_dir"] == str(run_dir)
    assert (run_dir / "model.pt").exists() and (run_dir / "config.yaml").exists()
    assert load_checkpoint(run_dir / "last.pt")["epoch"] == 1
    second = run_step(learn_meta_repr, tiny_config("learn_meta_repr", synthetic_dataset, "epochs=3", "run_name=r1",
                                             "lr_decay_epochs=1"))
    history = json.loads((run_dir / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert "resumed from" in (run_dir / "log.txt").read_text()
    assert set(second["best_val"]) == {"1shot", "2shot"}
    assert [h["lr"] for h in history] == pytest.approx([0.05, 0.005, 0.005])


def test_labeler_then_meta_eval_find_earlier_runs_by_name_and_latest(synthetic_dataset, workspace):
    run_step(learn_meta_repr, tiny_config("learn_meta_repr", synthetic_dataset, "epochs=2", "run_name=base",
                                    "lr_decay_epochs=1", "learning_rate=0.02"))
    result = run_step(learn_labeler, tiny_config("learn_labeler", synthetic_dataset, "epochs=1",
                                                 "pretrained_labeler=base", "K=40", "run_name=lab",
                                                 "sup_rotate_aug=false", "batch_size=32"))
    report = json.loads((saves_dir(workspace) / "learn_labeler" / "lab" / "labeler_report.json").read_text())
    assert result["labeler"]["true_classes"] == 24
    assert report["tasks_kept"] == report["tasks_total"] > 0
    assert 0.0 <= report["clustering_accuracy"] <= 1.0
    check = report["diagnostics"]["count_check"]
    assert (check["K"], check["K_lower"], check["clusters"]) == (40, 30, report["clusters"])
    log = (saves_dir(workspace) / "learn_labeler" / "lab" / "log.txt").read_text()
    assert f"count check: {check['clusters_lower']} clusters with K=30, {check['clusters']} with K=40" in log
    split = report["diagnostics"]["oversplit"]
    assert split["classes"] == report["clusters"]
    assert (f"over-split check: {split['looks_split']} classes look split over {split['clusters_involved']} of the "
            f"{split['classes']} global classes") in log
    centroids = np.load(saves_dir(workspace) / "learn_labeler" / "lab" / "centroids.npz")["centroids"]
    # Every cluster that labels a task is a centroid; a centroid may end up labelling nothing.
    assert centroids.shape[1] == 64 and centroids.shape[0] == report["centroids"] >= report["clusters"]
    evaluation = run_step(meta_eval, tiny_config("meta_eval", synthetic_dataset, "pretrained_model=latest",
                                           "from_step=learn_labeler", "run_name=ev"))
    assert evaluation["model"].endswith("learn_labeler/lab/model.pt")
    assert [row["shots"] for row in evaluation["rows"]] == [1, 5]
    # Perfect tasks have no spread: the CI is 0 only at 100 %.
    assert all(25.0 <= row["acc"] <= 100.0 and (row["ci"] > 0 or row["acc"] == 100.0) for row in evaluation["rows"])
    saved = json.loads((saves_dir(workspace) / "meta_eval" / "ev" / "results.json").read_text())
    assert saved["rows"][0]["acc"] == pytest.approx(evaluation["rows"][0]["acc"])


def test_reusing_saved_centroids_gives_the_same_labels(synthetic_dataset, workspace):
    run_step(learn_meta_repr, tiny_config("learn_meta_repr", synthetic_dataset, "epochs=1", "run_name=base"))
    run_step(learn_labeler, tiny_config("learn_labeler", synthetic_dataset, "epochs=1", "pretrained_labeler=base",
                                  "K=40", "run_name=a", "sup_rotate_aug=false"))
    run_step(learn_labeler, tiny_config("learn_labeler", synthetic_dataset, "epochs=1", "pretrained_labeler=base",
                                  "pretrained_centroids=a", "run_name=b", "sup_rotate_aug=false"))
    reports = [json.loads((saves_dir(workspace) / "learn_labeler" / n / "labeler_report.json").read_text())
               for n in ("a", "b")]
    assert reports[0]["clusters"] == reports[1]["clusters"]
    assert reports[0]["clustering_accuracy"] == reports[1]["clustering_accuracy"]
    assert "count_check" in reports[0]["diagnostics"] and "count_check" not in reports[1]["diagnostics"]


def test_the_oracle_trains_with_rotation_heads_and_evaluates(synthetic_dataset, workspace):
    result = run_step(sup_baseline, tiny_config("sup_baseline", synthetic_dataset, "epochs=1", "run_name=o",
                                          "batch_size=32", "rotate_aug=true"))
    assert result["n_classes"] == [24]
    state = load_checkpoint(saves_dir(workspace) / "sup_baseline" / "o" / "last.pt")["trainable"]
    assert state["heads.0.weight"].shape[0] == 4 * 24


def test_learn_labeler_without_a_meta_repr_model_says_what_to_run_first(synthetic_dataset, workspace):
    with pytest.raises(MelaError, match="no finished learn_meta_repr run"):
        run_step(learn_labeler, tiny_config("learn_labeler", synthetic_dataset, "epochs=1"))


def test_a_bf16_run_on_the_cpu_trains_logs_its_precision_and_resumes_in_fp32(synthetic_dataset, workspace):
    small = ["epochs=1", "run_name=half", "lr_decay_epochs=1", "no_replacement=false", "train_db_size=8"]
    run_step(learn_meta_repr, tiny_config("learn_meta_repr", synthetic_dataset, *small, "precision=bf16",
                                          "channels_last=true"))
    run_dir = saves_dir(workspace) / "learn_meta_repr" / "half"
    first_line = (run_dir / "log.txt").read_text().splitlines()[0]
    assert first_line.endswith(f"run folder {run_dir} on cpu, precision bf16, channels_last on (if interrupted, "
                               "rerun with run_name=half to resume)")
    saved = OmegaConf.load(run_dir / "config.yaml")
    assert (saved.precision, saved.channels_last) == ("bf16", True)
    history = json.loads((run_dir / "history.json").read_text())
    assert np.isfinite(history[0]["loss"]) and 20.0 < history[0]["val_2shot"] <= 100.0
    # Precision and layout say how a run computes, not what: reopening the run with others is not refused.
    run_step(learn_meta_repr, tiny_config("learn_meta_repr", synthetic_dataset, *small, "precision=fp32"))
    starts = [line for line in (run_dir / "log.txt").read_text().splitlines() if "| run folder " in line]
    assert starts[1].split(" on ", 1)[1].startswith("cpu, precision fp32, channels_last on (")  # auto: convnet4
