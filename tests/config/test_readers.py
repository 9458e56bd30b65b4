"""Reading precision and channels_last from the configs: every step, the pipeline, and bad values."""

from __future__ import annotations

import pytest

from mela.cli import main
from mela.config import compose_config, default_config
from mela.config.readers import read_compute
from mela.engine.precision import ComputeSettings
from mela.steps import learn_labeler, learn_meta_repr, meta_eval, pipeline

STEPS = ("learn_meta_repr", "learn_labeler", "fine_tune", "sup_baseline", "meta_eval")


@pytest.mark.parametrize("config", [*STEPS, "pipeline", "pipeline_paper"])
def test_every_config_ships_precision_and_channels_last_set_to_auto(config: str) -> None:
    cfg = default_config(config)
    assert (cfg.precision, cfg.channels_last) == ("auto", "auto")


@pytest.mark.parametrize(("overrides", "expected"), [
    ([], ComputeSettings("auto", None)),
    (["precision=bf16", "channels_last=true"], ComputeSettings("bf16", True)),
    (["precision=fp32", "channels_last=false"], ComputeSettings("fp32", False)),
    (["channels_last=auto"], ComputeSettings("auto", None)),
])
def test_the_readers_turn_the_text_into_typed_settings(overrides: list[str], expected: ComputeSettings) -> None:
    cfg = compose_config("learn_meta_repr", overrides)
    assert read_compute(cfg) == expected
    assert learn_meta_repr.read_settings(cfg).training.compute == expected


def test_learn_labeler_pre_training_and_meta_eval_read_them_too() -> None:
    labeler = learn_labeler.read_settings(compose_config("learn_labeler", ["precision=bf16", "channels_last=false"]))
    evaluation = meta_eval.read_settings(compose_config("meta_eval", ["precision=fp32", "channels_last=true"]))
    assert labeler.training.compute == ComputeSettings("bf16", False)
    assert evaluation.compute == ComputeSettings("fp32", True)


@pytest.mark.parametrize(("override", "message"), [
    ("precision=fp16", "error: precision must be one of auto, fp32, bf16, got 'fp16'"),
    ("precision=16", "error: precision must be one of auto, fp32, bf16, got '16'"),
    ("precision=true", "error: precision must be one of auto, fp32, bf16, got 'True'"),
    ("channels_last=sometimes", "error: channels_last must be auto, true or false, got 'sometimes'"),
])
def test_a_bad_value_is_one_line_listing_the_valid_ones(override: str, message: str, workspace, capsys) -> None:
    assert main(["learn-meta-repr", "dataset=glyphs", override]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [message]


def test_pipeline_precision_and_channels_last_reach_every_step(workspace) -> None:
    settings = pipeline.read_settings(compose_config("pipeline", ["precision=bf16", "channels_last=false"]))
    wanted = ComputeSettings("bf16", False)
    assert {step: s.training.compute for step, s in settings.steps.items()} == dict.fromkeys(settings.steps, wanted)
    assert settings.evaluation.compute == wanted
    section = pipeline.read_settings(compose_config("pipeline", ["sup_baseline.precision=fp32"]))
    assert section.steps["sup_baseline"].training.compute == ComputeSettings("fp32", None)
    assert section.steps["learn_meta_repr"].training.compute == ComputeSettings("auto", None)
