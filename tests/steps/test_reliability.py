"""What a user sees when runs collide, inputs are bad or the machine fails: one line, a non-zero exit,
nothing finished overwritten, no folder left behind (issue 12, case by case)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mela.cli import main
from mela.runlock import RunLock
from mela.workspace import saves_dir

from ..conftest import make_synthetic_split

TINY = ["model=convnet4", "n_ways=3", "n_shots=2", "n_queries=2", "val_n_ways=3", "val_shots=[1,2]",
        "val_n_shots=2", "test_db_size=5", "epochs=1", "lr_decay_epochs=1", "progress=false", "hflip=false",
        "image_size=16", "plots=false", "tensorboard=false"]


def write_custom(folder: Path, per_class: int = 10, seed: int = 1, val_per_class: int | None = None) -> list[str]:
    """A custom .npz data set (6 / 4 / 4 classes of 16x16 patterns) and its split; the dataset settings."""
    folder.mkdir(parents=True, exist_ok=True)
    split = make_synthetic_split(14, per_class, seed)
    images, labels = split.images[..., 0], np.array([f"c{c:02d}" for c in split.labels])
    if val_per_class is not None:  # the val classes (c06..c09) get fewer images
        keep = np.ones(len(labels), dtype=bool)
        for name in ("c06", "c07", "c08", "c09"):
            keep[np.flatnonzero(labels == name)[val_per_class:]] = False
        images, labels = images[keep], labels[keep]
    np.savez(folder / "data.npz", images=images, labels=labels)
    names = [f"c{c:02d}" for c in range(14)]
    (folder / "split.json").write_text(json.dumps({"train": names[:6], "val": names[6:10], "test": names[10:]}))
    return ["dataset=custom", f"custom_path={folder / 'data.npz'}", f"custom_split={folder / 'split.json'}"]


def cli(args: list[str], capsys) -> tuple[int, list[str]]:
    code = main(args)
    return code, capsys.readouterr().err.strip().splitlines()


def run_folders(workspace: Path) -> list[Path]:
    saves = saves_dir(workspace)
    return sorted(p for p in saves.glob("*/*") if p.is_dir()) if saves.exists() else []


# 1. Two runs on one run folder


def test_a_second_launch_on_a_locked_run_gets_one_line_naming_the_holder_and_changes_nothing(tmp_path, workspace):
    data = write_custom(tmp_path / "data")
    run_dir = saves_dir(workspace) / "learn_meta_repr" / "same"
    env = {**os.environ, "WORKSPACE": str(workspace)}
    with RunLock(run_dir):
        (run_dir / "best_1shot.pt").write_bytes(b"the better model")
        result = subprocess.run([sys.executable, "-m", "mela.cli", "learn-meta-repr", *data, *TINY, "run_name=same"],
                                capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: run folder") and f"PID {os.getpid()}" in lines[-1]
    assert "in use by another mela run" in lines[-1]
    assert (run_dir / "best_1shot.pt").read_bytes() == b"the better model"
    assert not (run_dir / "log.txt").exists()


# 2. Every check before any training


@pytest.mark.parametrize(("override", "fragment"), [
    ("learn_labeler.K=abc", "K must be an integer"),
    ("learn_labeler.K=0", "K (number of initial centroids) must be positive"),
    ("learn_meta_repr.epochs=abc", "epochs must be an integer"),
    ("meta_eval.test_db_size=0", "test_db_size (evaluation tasks per shot count) must be at least 1"),
])
def test_a_bad_pipeline_section_fails_before_the_first_epoch(override, fragment, tmp_path, workspace, capsys):
    data = write_custom(tmp_path / "data")
    code, err = cli(["pipeline", *data, "n_ways=3", "n_queries=2", override, "run_name=p"], capsys)
    assert code == 2 and fragment in err[-1] and len(err) == 1
    assert run_folders(workspace) == []


def test_too_few_validation_images_are_refused_before_training(tmp_path, workspace, capsys):
    data = write_custom(tmp_path / "data", val_per_class=3)
    code, err = cli(["learn-meta-repr", *data, *TINY], capsys)
    assert code == 2
    assert "learn_meta_repr's validation tasks on the val split of custom need 3 classes with at least 4 images" \
        in err[-1]
    assert run_folders(workspace) == []


def test_a_data_set_too_small_for_meta_eval_is_refused_before_the_pipeline_trains(tmp_path, workspace, capsys):
    data = write_custom(tmp_path / "data", per_class=12)
    code, err = cli(["pipeline", *data, "n_ways=3", "n_queries=2", "image_size=16", "run_name=p"], capsys)
    assert code == 2 and "meta_eval's 1-shot tasks on the test split of custom" in err[-1]
    assert "(1 shots + 15 queries)" in err[-1]
    assert run_folders(workspace) == []


# 3. Settings never silently ignored, metadata never rewritten


def test_a_finished_run_reopened_with_other_settings_is_refused_and_keeps_its_config(tmp_path, workspace, capsys):
    data = write_custom(tmp_path / "data")
    assert cli(["learn-meta-repr", *data, *TINY, "run_name=r"], capsys)[0] == 0
    config = (saves_dir(workspace) / "learn_meta_repr" / "r" / "config.yaml").read_text()
    code, err = cli(["learn-meta-repr", *data, *TINY, "run_name=r", "model=resnet12"], capsys)
    assert code == 2 and "run r was started with other settings (model: 'convnet4' -> 'resnet12')" in err[-1]
    code, err = cli(["learn-meta-repr", *data, *TINY, "run_name=r", "seed=3"], capsys)
    assert code == 2 and "seed: 0 -> 3" in err[-1]
    assert (saves_dir(workspace) / "learn_meta_repr" / "r" / "config.yaml").read_text() == config


def test_latest_never_picks_a_model_trained_on_another_custom_data_set(tmp_path, workspace, capsys):
    first, second = write_custom(tmp_path / "a", seed=1), write_custom(tmp_path / "b", seed=2)
    assert cli(["learn-meta-repr", *first, *TINY, "run_name=on_a"], capsys)[0] == 0
    code, err = cli(["learn-labeler", *second, *[o.replace("model=", "train_model=") for o in TINY],
                     "label_recovery_model=convnet4", "pretrained_labeler=latest", "K=12"], capsys)
    assert code == 2 and "no finished learn_meta_repr run on dataset custom@" in err[-1]


def test_a_checkpoint_of_another_architecture_is_refused(tmp_path, workspace, capsys):
    data = write_custom(tmp_path / "data")
    assert cli(["sup-baseline", *data, *TINY, "run_name=base", "batch_size=16", "rotate_aug=false"], capsys)[0] == 0
    model = saves_dir(workspace) / "sup_baseline" / "base" / "model.pt"
    code, err = cli(["learn-meta-repr", *data, *[o.replace("convnet4", "resnet12") for o in TINY],
                     f"pretrained_model={model}"], capsys)
    assert code == 2 and "holds a convnet4 but model=resnet12" in err[-1]
    assert not (saves_dir(workspace) / "learn_meta_repr").exists() or run_folders(workspace) == [model.parent]


def test_a_pipeline_rerun_with_other_settings_is_refused_and_says_which(tmp_path, workspace, capsys):
    data = write_custom(tmp_path / "data")
    pipeline_dir = saves_dir(workspace) / "pipeline" / "p"
    pipeline_dir.mkdir(parents=True)
    (pipeline_dir / "config.yaml").write_text("dataset: custom\ntest_db_size: 1000\n")
    code, err = cli(["pipeline", *data, "n_ways=3", "n_queries=2", "meta_eval.n_queries=2", "test_db_size=50",
                     "run_name=p"], capsys)
    assert code == 2 and "run p was started with other settings" in err[-1] and "test_db_size: 1000 -> 50" in err[-1]
    assert (pipeline_dir / "config.yaml").read_text() == "dataset: custom\ntest_db_size: 1000\n"


# 5. One line where a traceback used to be


def test_a_workspace_that_is_a_file_or_read_only_is_one_line(tmp_path, monkeypatch, capsys):
    data = write_custom(tmp_path / "data")
    afile = tmp_path / "ws_file"
    afile.write_text("not a folder")
    monkeypatch.setenv("WORKSPACE", str(afile))
    code, err = cli(["learn-meta-repr", *data, *TINY], capsys)
    assert code == 2 and "cannot create the workspace folder" in err[-1] and len(err) == 1
    if os.geteuid() != 0:  # root writes anywhere
        readonly = tmp_path / "ro"
        readonly.mkdir(mode=0o500)
        monkeypatch.setenv("WORKSPACE", str(readonly))
        code, err = cli(["learn-meta-repr", *data, *TINY], capsys)
        assert code == 2 and "workspace folder" in err[-1]


def test_a_huge_learning_rate_stops_with_one_line_and_the_advice(tmp_path, workspace, capsys):
    data = write_custom(tmp_path / "data")
    code, err = cli(["learn-meta-repr", *data, *TINY, "learning_rate=1e12", "run_name=d"], capsys)
    assert code == 2 and "training diverged at epoch 1" in err[-1] and "lower learning_rate" in err[-1]


def test_a_bad_centroids_file_is_one_line(tmp_path, workspace, capsys):
    data = write_custom(tmp_path / "data")
    assert cli(["learn-meta-repr", *data, *TINY, "run_name=base"], capsys)[0] == 0
    bad = tmp_path / "bad.npz"
    np.savez(bad, something_else=np.zeros((4, 64)))
    code, err = cli(["learn-labeler", *data, *[o.replace("model=", "train_model=") for o in TINY],
                     "label_recovery_model=convnet4", "pretrained_labeler=base", f"pretrained_centroids={bad}"],
                    capsys)
    assert code == 2 and "centroids" in err[-1] and "something_else" in err[-1]
    assert not (saves_dir(workspace) / "learn_labeler").exists() or not any(
        (saves_dir(workspace) / "learn_labeler").iterdir())


# 6. Smaller cases


def test_a_run_name_that_is_a_path_is_refused(tmp_path, workspace, capsys):
    data = write_custom(tmp_path / "data")
    code, err = cli(["learn-meta-repr", *data, *TINY, "run_name=../../x"], capsys)
    assert code == 2 and "must be a plain name" in err[-1]
    assert not (tmp_path / "x").exists() and run_folders(workspace) == []


def test_a_single_evaluation_task_writes_valid_json_with_null_for_the_undefined_interval(tmp_path, workspace,
                                                                                         capsys):
    data = write_custom(tmp_path / "data")
    assert cli(["sup-baseline", *data, *TINY, "run_name=o", "batch_size=16", "rotate_aug=false"], capsys)[0] == 0
    code, _ = cli(["meta-eval", *data, "model=convnet4", "n_ways=3", "n_queries=2", "image_size=16",
                   "test_db_size=1", "pretrained_model=o", "run_name=ev"], capsys)
    assert code == 0
    text = (saves_dir(workspace) / "meta_eval" / "ev" / "results.json").read_text()
    assert "NaN" not in text
    rows = json.loads(text)["rows"]
    assert all(row["ci"] is None and row["tasks"] == 1 for row in rows)
