"""learn_labeler with data_aug and rotate_aug: the labelling features come from augmented views, end to end."""

from __future__ import annotations

import json

import pytest

from mela.steps import learn_labeler, learn_meta_repr
from mela.workspace import saves_dir
from tests.steps.test_step_round_trips import run_step, tiny_config


@pytest.mark.slow
def test_learn_labeler_clusters_features_of_augmented_and_rotated_views_and_says_so(synthetic_dataset, workspace):
    run_step(learn_meta_repr, tiny_config("learn_meta_repr", synthetic_dataset, "epochs=1", "run_name=base"))
    labels = {}
    for name, views in (("plain", []), ("views", ["data_aug=true", "rotate_aug=true"])):
        run_step(learn_labeler, tiny_config("learn_labeler", synthetic_dataset, "epochs=1", "pretrained_labeler=base",
                                            "K=40", f"run_name={name}", "sup_rotate_aug=false", "batch_size=32",
                                            "gallery=false", "plots=false", "count_check=false", *views))
        run_dir = saves_dir(workspace) / "learn_labeler" / name
        labels[name] = (run_dir / "global_labels.csv").read_text()
        log = (run_dir / "log.txt").read_text()
        note = "features from augmented views (data_aug) and the mean of 4 rotations (rotate_aug)"
        assert (note in log) == (name == "views")
        assert json.loads((run_dir / "labeler_report.json").read_text())["tasks_total"] > 0
    assert labels["plain"] != labels["views"]  # other features, other key distances
