"""The steps, one record each, so that the CLI, the pipeline, meta_eval and model look-ups read one table.

A step is a module of ``mela.steps`` with ``read_settings(cfg)`` (the one function that reads its config),
``run(settings, dataset=None)`` and ``check_data(settings, data)``, a config of the same name in ``mela.conf``,
and its keys in the settings registry (:mod:`mela.config.settings`, whose ``STEP_NAMES`` a test checks against
this table). :func:`register_step` records what other code needs to know about it (timm's manner); the module
itself is imported only when the step runs, which keeps ``mela --help`` fast.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class StepInfo:
    """What the rest of mela knows about a step.

    Attributes:
        name: the step's name: its config, its module in ``mela.steps``, its folder of runs.
        module: the dotted module path holding ``read_settings``, ``run`` and ``check_data``.
        description: the line ``mela --help`` prints.
        produces_model: its runs publish a ``model.pt`` (what ``pretrained_model`` and meta_eval may name).
        model_from: (setting, step): the setting that names the model it starts from, and the step making it;
            the pipeline points the setting at that step's run.
        pipeline_row: the row of its model in the pipeline's results table; None: the pipeline does not train it.
        needs_truth: it trains on true labels, so the pipeline skips it on a task collection without them.
    """

    name: str
    module: str
    description: str
    produces_model: bool = False
    model_from: tuple[str, str] | None = None
    pipeline_row: str | None = None
    needs_truth: bool = False

    @property
    def command(self) -> str:
        """``mela <command>``: the name with dashes."""
        return self.name.replace("_", "-")

    def load(self) -> ModuleType:
        """The step's module (imported now)."""
        return importlib.import_module(self.module)


_STEPS: dict[str, StepInfo] = {}


def register_step(name: str, module: str, *, description: str, produces_model: bool = False,
                  model_from: tuple[str, str] | None = None, pipeline_row: str | None = None,
                  needs_truth: bool = False) -> StepInfo:
    """Add a step to the table (the order of registration is the order the pipeline runs the steps in)."""
    if name in _STEPS:
        raise ValueError(f"step '{name}' is registered twice")
    if model_from is not None and model_from[1] not in _STEPS:
        raise ValueError(f"step '{name}' starts from '{model_from[1]}', which is not registered (before it)")
    info = StepInfo(name, module, description, produces_model, model_from, pipeline_row, needs_truth)
    _STEPS[name] = info
    return info


def step_info(name: str) -> StepInfo:
    return _STEPS[name]


def steps() -> list[StepInfo]:
    """Every step, in the order the pipeline runs them."""
    return list(_STEPS.values())


def step_names() -> tuple[str, ...]:
    return tuple(_STEPS)


def pipeline_steps() -> list[StepInfo]:
    """The steps the pipeline trains (and evaluates with meta_eval), in the order it runs them."""
    return [info for info in _STEPS.values() if info.pipeline_row is not None]


def _depth(info: StepInfo) -> int:
    return 0 if info.model_from is None else 1 + _depth(_STEPS[info.model_from[1]])


def model_steps(refined_first: bool = False) -> tuple[str, ...]:
    """The steps whose runs publish a model, where ``pretrained_model=latest`` or a run name is looked for.

    ``refined_first``: the most refined model first (the longest ``model_from`` chain, then the later registered),
    so that a run name several steps share (a pipeline's runs) resolves to its most refined model.
    """
    found = [(i, info) for i, info in enumerate(_STEPS.values()) if info.produces_model]
    if refined_first:
        found.sort(key=lambda pair: (_depth(pair[1]), pair[0]), reverse=True)
    return tuple(info.name for _, info in found)


register_step("learn_meta_repr", "mela.steps.learn_meta_repr",
              description="step 1: meta-learn a representation from locally labelled tasks",
              produces_model=True, pipeline_row="meta_repr")
register_step("learn_labeler", "mela.steps.learn_labeler",
              description="step 2: infer global labels by clustering, then pre-train on them",
              produces_model=True, model_from=("pretrained_labeler", "learn_meta_repr"), pipeline_row="mela")
register_step("fine_tune", "mela.steps.fine_tune",
              description="step 3: residual MLP on the frozen backbone, trained episodically",
              produces_model=True, model_from=("pretrained_model", "learn_labeler"), pipeline_row="mela_finetune")
register_step("sup_baseline", "mela.steps.sup_baseline",
              description="the oracle: supervised pre-training with the true labels",
              produces_model=True, pipeline_row="oracle", needs_truth=True)
register_step("meta_eval", "mela.steps.meta_eval",
              description="evaluate a saved model on 1-shot and 5-shot test tasks")
