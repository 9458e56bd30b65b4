"""MeLa (Meta Label Learning): infer global labels from locally labelled few-shot tasks, then pre-train on them.

The public API (see :mod:`mela.api` and the README's "From Python"):

=====================  ===================================================================
``open_dataset``       a registered data set; ``.split("train")`` -> :class:`ImageSplit`
``load_dataset``       one split directly
``create_model``       a fresh feature model by name (``mela models`` lists them)
``load_model``         a model saved by any step
``meta_train``         step 1: the ridge meta-learner on locally labelled tasks
``label_pile``         the task pile the labeler reads
``infer_global_labels``  step 2a: cluster task classes into global classes -> :class:`GlobalLabels`
``pretrain``           step 2b: supervised pre-training on inferred (or true) labels
``evaluate``           few-shot test accuracy with 95 % CIs -> [:class:`ShotResult`]
``run_pipeline``       every step, as ``mela pipeline`` -> :class:`PipelineResult`
=====================  ===================================================================

Names are imported on first use, so ``import mela`` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from mela._version import __version__

_API = {
    "open_dataset": "mela.api", "load_dataset": "mela.api", "create_model": "mela.api", "load_model": "mela.api",
    "meta_train": "mela.api", "label_pile": "mela.api", "infer_global_labels": "mela.api", "pretrain": "mela.api",
    "evaluate": "mela.api", "run_pipeline": "mela.api", "TrainResult": "mela.api", "ShotResult": "mela.api",
    "PipelineResult": "mela.api", "GlobalLabels": "mela.methods.global_labels",
    "LabelerConfig": "mela.methods.labeler", "ImageSplit": "mela.data.base", "Dataset": "mela.data.registry",
    "TaskShape": "mela.data.samplers", "EvalProtocol": "mela.methods.evaluator", "MelaError": "mela.errors",
}
__all__ = [
    "Dataset", "EvalProtocol", "GlobalLabels", "ImageSplit", "LabelerConfig", "MelaError", "PipelineResult",
    "ShotResult", "TaskShape", "TrainResult", "__version__", "create_model", "evaluate", "infer_global_labels",
    "label_pile", "load_dataset", "load_model", "meta_train", "open_dataset", "pretrain", "run_pipeline",
]

if TYPE_CHECKING:
    from mela.api import (
        PipelineResult,
        ShotResult,
        TrainResult,
        create_model,
        evaluate,
        infer_global_labels,
        label_pile,
        load_dataset,
        load_model,
        meta_train,
        open_dataset,
        pretrain,
        run_pipeline,
    )
    from mela.data.base import ImageSplit
    from mela.data.registry import Dataset
    from mela.data.samplers import TaskShape
    from mela.errors import MelaError
    from mela.methods.evaluator import EvalProtocol
    from mela.methods.global_labels import GlobalLabels
    from mela.methods.labeler import LabelerConfig


def __getattr__(name: str) -> object:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'mela' has no attribute '{name}'")
