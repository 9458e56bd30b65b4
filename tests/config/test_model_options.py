"""``model_options``: backbone options from the config reach the factory, are checked early and are saved."""

from __future__ import annotations

import pytest
import torch

import mela
from mela.config.compose import compose_config
from mela.engine.checkpoint import initial_model, load_feature_model, model_payload, save_atomic
from mela.errors import MelaError
from mela.models.feature_model import build_model
from mela.steps import learn_labeler, learn_meta_repr, pipeline, sup_baseline

STEPS_WITH_OPTIONS = ("learn_meta_repr", "sup_baseline", "learn_labeler", "pipeline", "pipeline_paper",
                      "pipeline_tasks")


@pytest.mark.parametrize("name", STEPS_WITH_OPTIONS)
def test_model_options_default_to_empty_so_results_do_not_change(name: str) -> None:
    assert dict(compose_config(name).model_options) == {}


def test_model_options_are_read_from_either_override_syntax() -> None:
    for override in ("model_options.hidden=32", "model_options={hidden: 32}"):
        cfg = compose_config("learn_meta_repr", ["model=convnet4", override])
        assert learn_meta_repr.read_settings(cfg).model_options == {"hidden": 32}
    assert sup_baseline.read_settings(compose_config("sup_baseline")).model_options == {}
    cfg = compose_config("learn_labeler", ["train_model=convnet4", "model_options.hidden=8"])
    assert learn_labeler.read_settings(cfg).model_options == {"hidden": 8}


@pytest.mark.parametrize(("override", "message"), [
    ("model_options.hiden=32", "model 'convnet4' has no option 'hiden'; valid options: in_channels, hidden"),
    ("model_options.in_channels=1", "model_options cannot set in_channels"),
    ("model_options=3", "model_options must be a mapping"),
])
def test_bad_model_options_are_one_line_errors_when_read(override: str, message: str) -> None:
    with pytest.raises(MelaError, match=message):
        learn_meta_repr.read_settings(compose_config("learn_meta_repr", ["model=convnet4", override]))


def test_the_pipeline_hands_its_model_options_to_every_training_step(workspace) -> None:
    settings = pipeline.read_settings(compose_config("pipeline", ["model_options.hidden=16"]))
    for step in ("learn_meta_repr", "learn_labeler", "sup_baseline"):
        assert settings.steps[step].model_options == {"hidden": 16}
    settings = pipeline.read_settings(compose_config("pipeline", ["sup_baseline.model_options.hidden=8"]))
    assert settings.steps["sup_baseline"].model_options == {"hidden": 8}
    assert settings.steps["learn_meta_repr"].model_options == {}


def test_options_are_stored_in_the_spec_and_a_saved_model_rebuilds_with_them(tmp_path) -> None:
    model = initial_model(None, "convnet4", 1, 16, torch.device("cpu"), print, {"hidden": 16})
    assert model.feat_dim == 16 and model.spec.backbone_kwargs == {"in_channels": 1, "hidden": 16}
    save_atomic(model_payload(model), tmp_path / "model.pt")
    loaded, _ = load_feature_model(tmp_path / "model.pt", torch.device("cpu"))
    assert loaded.feat_dim == 16
    resumed = initial_model(tmp_path / "model.pt", "convnet4", 1, None, torch.device("cpu"), lambda _m: None,
                            {"hidden": 16})
    assert resumed.feat_dim == 16
    with pytest.raises(MelaError, match="was built with model_options"):
        initial_model(tmp_path / "model.pt", "convnet4", 1, None, torch.device("cpu"), lambda _m: None,
                      {"hidden": 8})
    with pytest.raises(MelaError, match="model_options cannot set in_channels"):
        build_model("convnet4", 1, backbone_options={"in_channels": 3})
    assert mela.create_model("convnet4", 1, hidden=8).feat_dim == 8
