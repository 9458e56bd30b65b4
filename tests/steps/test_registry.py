"""The step registry (``mela.steps.registry``) is the one table of steps: the configs, the settings registry's
names, the CLI, the pipeline and meta_eval's model look-ups follow it."""

from __future__ import annotations

import pytest

from mela.cli import STEP_COMMANDS, USAGE
from mela.config import config_names
from mela.config.compose import STEP_SECTIONS
from mela.config.settings import STEP_NAMES
from mela.steps import meta_eval, pipeline
from mela.steps.registry import model_steps, pipeline_steps, register_step, step_info, step_names, steps


def test_the_registered_steps_are_the_settings_registry_names_in_order_each_with_its_config():
    assert step_names() == STEP_NAMES == STEP_SECTIONS
    assert set(step_names()) <= set(config_names())


@pytest.mark.parametrize("name", STEP_NAMES)
def test_every_registered_module_has_the_step_interface(name):
    module = step_info(name).load()
    assert module.__name__ == f"mela.steps.{name}" and name == module.STEP
    for function in ("read_settings", "run", "check_data"):
        assert callable(getattr(module, function)), function


def test_the_cli_lists_every_step_with_its_description():
    assert {**{info.command: info.name for info in steps()}, "pipeline": "pipeline"} == STEP_COMMANDS
    for info in steps():
        assert f"  {info.command:<16}  {info.description}" in USAGE


def test_the_pipeline_trains_the_steps_with_a_row_in_order_and_wires_each_to_the_model_it_starts_from():
    assert list(pipeline.STEP_MODULES) == ["learn_meta_repr", "learn_labeler", "fine_tune", "sup_baseline"]
    assert pipeline.EVALUATED == (("meta_repr", "learn_meta_repr"), ("mela", "learn_labeler"),
                                  ("mela_finetune", "fine_tune"), ("oracle", "sup_baseline"))
    assert {i.name: i.model_from for i in pipeline_steps() if i.model_from} == {
        "learn_labeler": ("pretrained_labeler", "learn_meta_repr"), "fine_tune": ("pretrained_model", "learn_labeler")}


def test_a_run_name_that_several_steps_share_resolves_to_the_most_refined_model_in_meta_eval():
    assert meta_eval.PRODUCERS == model_steps(refined_first=True) == (
        "fine_tune", "learn_labeler", "sup_baseline", "learn_meta_repr")
    assert model_steps() == ("learn_meta_repr", "learn_labeler", "fine_tune", "sup_baseline")  # no meta_eval


def test_a_step_is_registered_once_and_after_the_step_it_starts_from():
    with pytest.raises(ValueError, match="registered twice"):
        register_step("fine_tune", "mela.steps.fine_tune", description="again")
    with pytest.raises(ValueError, match="'nowhere', which is not registered"):
        register_step("distill", "x", description="d", model_from=("pretrained_model", "nowhere"))
    assert "distill" not in step_names()
