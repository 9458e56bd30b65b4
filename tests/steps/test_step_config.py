"""Config composition, validation and model references, without training anything big."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from mela.cli import main
from mela.config import compose_config, compose_pipeline_step, config_names, default_config
from mela.errors import MelaError
from mela.workspace import saves_dir

REPO = Path(__file__).resolve().parents[2]
SEED_DATASETS = ["miniImageNet", "tieredImageNet", "mini60", "tiered780", "mixed", "h_aircraft"]


def test_every_step_config_keeps_the_reference_argument_names_and_defaults():
    reference_defaults = {
        "learn_meta_repr": {"n_ways": 5, "n_shots": 5, "n_queries": 15, "lam": 0.001, "epochs": 25,
                            "learning_rate": 0.05, "lr_decay_epochs": "17,22", "train_db_size": 2800,
                            "test_db_size": 1000, "extra_reg": True, "data_aug": True, "SGD": True},
        "learn_labeler": {"K": 400, "std_factor": 3.5, "epochs": 50, "lr_decay_epochs": "35,43", "batch_size": 128,
                          "sup_rotate_aug": True, "sup_data_aug": True, "data_aug": False},
        "fine_tune": {"epochs": 2, "learning_rate": 0.0001, "weight_decay": 1e-6, "rotate_aug": True},
        "meta_eval": {"test_db_size": 1500, "n_queries": 15, "test_C": 1.0, "use_bias": True, "is_norm": True},
        "sup_baseline": {"batch_size": 64, "epochs": 50, "rotate_aug": True},
    }
    for step, expected in reference_defaults.items():
        cfg = default_config(step)
        for key, value in expected.items():
            assert cfg[key] == value, (step, key)
    assert {"learn_meta_repr", "learn_labeler", "fine_tune", "meta_eval", "sup_baseline", "pipeline"} <= set(
        config_names())


def test_overrides_use_the_reference_command_line_syntax():
    cfg = compose_config("learn_meta_repr", ["dataset=miniImageNet", "n_shots=1", "lr_decay_epochs=10"])
    assert (cfg.dataset, cfg.n_shots, cfg.lr_decay_epochs) == ("miniImageNet", 1, 10)


@pytest.mark.parametrize(("override", "fragment"), [
    ("nshots=1", "Could not override 'nshots'"),
    ("n_shots=abc", "n_shots must be an integer"),
    ("data_aug=maybe", "data_aug must be true or false"),
])
def test_bad_overrides_are_one_line_errors(override, fragment):
    with pytest.raises(MelaError, match=fragment) as info:
        compose_config("learn_meta_repr", [override])
    assert "\n" not in str(info.value)


def run_cli(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.err.strip().splitlines()


@pytest.mark.parametrize("dataset", SEED_DATASETS)
def test_every_seed_data_set_name_reports_missing_files_clearly(dataset, workspace, capsys):
    code, err = run_cli(["learn-meta-repr", f"dataset={dataset}"], capsys)
    assert code == 2
    last = err[-1]
    assert last.startswith(f"error: data set '{dataset}' not found:")
    assert "make download_all" in last or "mela data" in last
    assert not (saves_dir(workspace) / "learn_meta_repr").exists()  # a failed start leaves no empty run folder


def test_unknown_model_and_data_set_names_list_the_valid_ones(workspace, capsys):
    code, err = run_cli(["learn-meta-repr", "model=resnet13", "dataset=glyphs"], capsys)
    assert code == 2 and "valid names:" in err[-1] and "resnet12" in err[-1]
    code, err = run_cli(["sup-baseline", "dataset=imagenet21k"], capsys)
    assert code == 2 and "unknown data set 'imagenet21k'" in err[-1] and "miniImageNet" in err[-1]


def test_contradictory_feat_dim_is_refused_through_the_cli(workspace, synthetic_dataset, capsys):
    code, err = run_cli(["learn-meta-repr", f"dataset={synthetic_dataset}", "model=convnet4", "feat_dim=640"], capsys)
    assert code == 2 and "feat_dim=640 contradicts model convnet4" in err[-1]


def test_the_reference_style_script_gives_a_one_line_error_for_a_typo():
    result = subprocess.run([sys.executable, str(REPO / "learn_meta_repr.py"), "nshots=1"], capture_output=True,
                            text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: bad setting for learn_meta_repr: Could not override 'nshots'. (see `mela learn-meta-repr --help`)"]


def test_both_pipeline_configs_compose_every_step_and_accept_step_overrides():
    from mela.steps.pipeline import TRAINING_STEPS

    for name in ("pipeline", "pipeline_paper"):
        cfg = compose_config(name, ["learn_meta_repr.epochs=2", "learn_labeler.K=100", "n_shots=1"])
        for step in (*TRAINING_STEPS, "meta_eval"):
            composed = compose_pipeline_step(cfg, step, "run")
            assert composed.run_name == "run" and composed.dataset == cfg.dataset
        assert compose_pipeline_step(cfg, "learn_meta_repr", "run").epochs == 2
        assert compose_pipeline_step(cfg, "learn_labeler", "run").K == 100
        assert compose_pipeline_step(cfg, "fine_tune", "run").n_shots == 1
    with pytest.raises(MelaError, match="'foo' is not a learn_labeler setting"):
        compose_pipeline_step(compose_config("pipeline", ["learn_labeler.foo=1"]), "learn_labeler", "run")


def test_a_model_selection_shot_count_that_is_never_validated_is_refused(synthetic_dataset, workspace, capsys):
    code, err = run_cli(["learn-meta-repr", f"dataset={synthetic_dataset}", "model=convnet4", "val_shots=[1]",
                         "val_n_shots=5"], capsys)
    assert code == 2 and "val_n_shots=5 picks the model by a validation that does not run" in err[-1]


def test_progress_defaults_to_auto_everywhere_and_true_false_keep_working(monkeypatch):
    from mela.steps import learn_meta_repr, pipeline

    for name in ("learn_meta_repr", "learn_labeler", "fine_tune", "sup_baseline", "meta_eval", "pipeline",
                 "pipeline_paper"):
        assert default_config(name).progress == "auto", name
    monkeypatch.setattr("sys.stderr", io.StringIO())  # not a terminal: auto means no bars
    assert learn_meta_repr.read_settings(compose_config("learn_meta_repr")).training.progress is False
    assert learn_meta_repr.read_settings(compose_config("learn_meta_repr", ["progress=true"])).training.progress
    with pytest.raises(MelaError, match="progress must be auto, true or false, got 'sometimes'"):
        learn_meta_repr.read_settings(compose_config("learn_meta_repr", ["progress=sometimes"]))
    # The pipeline hands progress, tensorboard and plots to every training step.
    settings = pipeline.read_settings(compose_config("pipeline", ["progress=true", "tensorboard=false",
                                                                  "plots=false", "run_name=x"]))
    assert settings.plots is False
    for step, step_settings in settings.steps.items():
        training = step_settings.training
        assert (training.progress, training.report.tensorboard, training.report.plots) == (True, False, False), step
