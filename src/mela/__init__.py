"""MeLa (Meta Label Learning): infer global labels from locally labelled few-shot tasks, then pre-train on them.

The public API (see :mod:`mela.api` and the README's "From Python"):

=====================  ===================================================================
``open_dataset``       a registered data set; ``.split("train")`` -> :class:`ImageSplit`
``load_dataset``       one split directly
``create_model``       a fresh feature model by name (``mela models`` lists them)
``load_model``         a model saved by any step
``meta_train``         step 1: the ridge meta-learner on locally labelled tasks
``label_pile``         the task pile the labeler reads
``task_features``      a model's features of a pile's images
``infer_global_labels``  step 2a: cluster task classes into global classes -> :class:`GlobalLabels`
``pretrain``           step 2b: supervised pre-training on inferred (or true) labels
``evaluate``           few-shot test accuracy with 95 % CIs -> [:class:`ShotResult`]
``run_pipeline``       every step, as ``mela pipeline`` -> :class:`PipelineResult`
``open_tasks``         your locally labelled tasks (folder, manifest or pairs) -> :class:`TaskDataset`
``evaluate_tasks``     accuracy inside held-out tasks -> :class:`TasksResult`
``FewShotClassifier``  a trained model as a scikit-learn style few-shot classifier (``fit`` / ``predict``)
``embed``              a trained model's features of raw images (files, PIL images, arrays)
``export_model``       ``model.safetensors`` + ``mela_model.json`` (and ONNX / TorchScript)
=====================  ===================================================================

Names are imported on first use, so ``import mela`` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from mela._version import __version__

_API = {name: module for module, names in {
    "mela.api": ["open_dataset", "load_dataset", "create_model", "load_model", "meta_train", "label_pile",
                 "task_features", "infer_global_labels", "pretrain", "evaluate", "run_pipeline", "TrainResult",
                 "ShotResult", "PipelineResult", "open_tasks", "evaluate_tasks", "TasksResult", "export_model"],
    "mela.inference.classifier": ["FewShotClassifier", "embed"],
    "mela.data.preprocessing": ["Preprocessing"],
    "mela.data.task_dataset": ["TaskDataset"],
    "mela.data.tasks": ["TaskCollection"],
    "mela.methods.global_labels": ["GlobalLabels"],
    "mela.methods.labeler": ["LabelerConfig"],
    "mela.data.base": ["ImageSplit"],
    "mela.data.registry": ["Dataset"],
    "mela.data.samplers": ["TaskShape"],
    "mela.methods.evaluator": ["EvalProtocol"],
    "mela.errors": ["MelaError"],
}.items() for name in names}
__all__ = [
    "Dataset", "EvalProtocol", "FewShotClassifier", "GlobalLabels", "ImageSplit", "LabelerConfig", "MelaError",
    "PipelineResult", "Preprocessing", "ShotResult", "TaskCollection", "TaskDataset", "TaskShape", "TasksResult",
    "TrainResult", "create_model", "embed", "evaluate", "evaluate_tasks", "export_model", "infer_global_labels",
    "label_pile", "load_dataset", "load_model", "meta_train", "open_dataset", "open_tasks", "pretrain",
    "run_pipeline", "task_features",
    "__version__",
]

if TYPE_CHECKING:
    from mela.api import (
        PipelineResult,
        ShotResult,
        TasksResult,
        TrainResult,
        create_model,
        evaluate,
        evaluate_tasks,
        export_model,
        infer_global_labels,
        label_pile,
        load_dataset,
        load_model,
        meta_train,
        open_dataset,
        open_tasks,
        pretrain,
        run_pipeline,
        task_features,
    )
    from mela.data.base import ImageSplit
    from mela.data.preprocessing import Preprocessing
    from mela.data.registry import Dataset
    from mela.data.samplers import TaskShape
    from mela.data.task_dataset import TaskDataset
    from mela.data.tasks import TaskCollection
    from mela.errors import MelaError
    from mela.inference.classifier import FewShotClassifier, embed
    from mela.methods.evaluator import EvalProtocol
    from mela.methods.global_labels import GlobalLabels
    from mela.methods.labeler import LabelerConfig


def __dir__() -> list[str]:
    """The public API and the module's own dunder names (tab completion; not the helpers imported here)."""
    return sorted(set(__all__) | {name for name in globals() if name.startswith("__") and name.endswith("__")})


def __getattr__(name: str) -> object:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'mela' has no attribute '{name}'")
