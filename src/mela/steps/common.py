"""What every pipeline step shares: run folders, logging, data, model references, validation.

A step is a pure ``run(cfg) -> dict`` function; this module turns the user-facing
OmegaConf config into the typed objects the library takes, once, at the top.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from mela.data.augment import Augmenter
from mela.data.base import DatasetSpec, ImageSplit
from mela.data.registry import get_dataset_spec, load_split
from mela.data.samplers import TaskShape
from mela.device import pick_device
from mela.errors import MelaError
from mela.methods.evaluator import EvalProtocol, evaluate_model
from mela.methods.training import OptimSettings, parse_decay_epochs
from mela.models.feature_model import FeatureModel, ModelSpec
from mela.workspace import data_dir, init_workspace, saves_dir, workspace_root

STEPS = ("learn_meta_repr", "learn_labeler", "fine_tune", "meta_eval", "sup_baseline")
MODEL_FILE = "model.pt"
DONE_FILE = "done.json"


@dataclass
class RunContext:
    """One step's run: where it writes, what it runs on, and its logger."""

    step: str
    cfg: DictConfig
    workspace: Path
    device: torch.device
    run_dir: Path
    logger: logging.Logger

    def log(self, message: str) -> None:
        self.logger.info(message)


def _make_logger(step: str, run_dir: Path) -> logging.Logger:
    """A logger private to this run (not registered globally): the run's log.txt plus the console."""
    logger = logging.Logger(f"mela.{step}", logging.INFO)
    file_handler = logging.FileHandler(run_dir / "log.txt")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(name)s | %(message)s", "%Y-%m-%d %H:%M:%S"))
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter(f"[{step}] %(message)s"))
    logger.addHandler(file_handler)
    logger.addHandler(console)
    return logger


def default_run_name(cfg: DictConfig, model_name: str) -> str:
    return f"{cfg.dataset}_{model_name}_trial{cfg.trial}_{time.strftime('%Y%m%d-%H%M%S')}"


def check_settings(cfg: DictConfig) -> None:
    """Refuse settings that contradict each other, before anything is loaded or trained."""
    if "val_shots" in cfg and "val_n_shots" in cfg and int(cfg.val_n_shots) not in [int(k) for k in cfg.val_shots]:
        raise MelaError(f"val_n_shots={cfg.val_n_shots} picks the model by a validation that does not run: "
                        f"add it to val_shots (now {list(cfg.val_shots)})")
    for key in ("n_ways", "val_n_ways"):
        if key in cfg and int(cfg[key]) < 2:
            raise MelaError(f"{key} must be at least 2, got {cfg[key]}")


def start_run(cfg: DictConfig, step: str, model_name: str, resumable: bool = True) -> RunContext:
    """Check the config, create the run folder (or reopen it to resume), save the resolved config, log."""
    check_settings(cfg)
    root = workspace_root(cfg.get("workspace"))
    init_workspace(root)
    device = pick_device(str(cfg.get("device", "auto")))
    torch.manual_seed(int(cfg.seed))
    run_name = cfg.get("run_name") or default_run_name(cfg, model_name)
    run_dir = saves_dir(root) / step / str(run_name)
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    ctx = RunContext(step, cfg, root, device, run_dir, _make_logger(step, run_dir))
    hint = f" (if interrupted, rerun with run_name={run_name} to resume)" if resumable else ""
    ctx.log(f"run folder {run_dir} on {device}{hint}")
    return ctx


def finish_run(ctx: RunContext, metrics: dict) -> dict:
    """Mark the run complete (``done.json``: what later steps and ``latest`` look for) and close its log."""
    record = {"step": ctx.step, "dataset": ctx.cfg.dataset, "run_dir": str(ctx.run_dir),
              "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **metrics}
    tmp = ctx.run_dir / f".{DONE_FILE}.tmp"
    tmp.write_text(json.dumps(record, indent=1, default=str))
    os.replace(tmp, ctx.run_dir / DONE_FILE)
    for handler in list(ctx.logger.handlers):
        handler.close()
        ctx.logger.removeHandler(handler)
    return record


def dataset_spec(cfg: DictConfig) -> DatasetSpec:
    """The spec of ``cfg.dataset``; ``custom`` builds one from ``custom_path``."""
    if cfg.dataset == "custom":
        if not cfg.get("custom_path"):
            raise MelaError("dataset=custom needs custom_path=<folder of class folders or .npz file>")
        from mela.data.custom import custom_dataset_spec

        return custom_dataset_spec(cfg.custom_path, cfg.get("custom_split"), int(cfg.get("image_size", 84)),
                                   int(cfg.seed))
    return get_dataset_spec(str(cfg.dataset))


def load_data(cfg: DictConfig, spec: DatasetSpec, split: str, root: Path) -> ImageSplit:
    """Load ``split`` of the configured data set from the workspace."""
    if cfg.dataset == "custom":
        return spec.load(data_dir(root), split)
    return load_split(spec.name, split, data_dir(root))


def build_model(name: str, in_channels: int, feat_dim: int | None, residual_mlp: bool = False) -> FeatureModel:
    """A fresh feature model; ``feat_dim``, when given, must agree with the architecture."""
    kwargs = {"in_channels": in_channels}
    model = FeatureModel(ModelSpec(name, kwargs, residual_mlp))
    check_feat_dim(feat_dim, model, name)
    return model


def initial_model(start: Path | None, name: str, in_channels: int, feat_dim: int | None,
                  ctx: RunContext) -> FeatureModel:
    """The model a training step starts from: a saved one (``pretrained_model``) or a fresh ``name``."""
    if start is None:
        return build_model(name, in_channels, feat_dim)
    from mela.methods.checkpoint import load_feature_model

    model, _ = load_feature_model(start, ctx.device)
    ctx.log(f"starting from {start}")
    check_feat_dim(feat_dim, model, model.spec.backbone)
    return model


def check_feat_dim(feat_dim: int | None, model: FeatureModel, name: str) -> None:
    if feat_dim not in (None, "null") and int(feat_dim) != model.feat_dim:
        raise MelaError(f"feat_dim={feat_dim} contradicts model {name}, whose features have {model.feat_dim} "
                        f"dimensions; drop feat_dim or set it to {model.feat_dim}")


def optim_settings(cfg: DictConfig) -> OptimSettings:
    return OptimSettings(
        epochs=int(cfg.epochs), learning_rate=float(cfg.learning_rate), sgd=bool(cfg.SGD),
        momentum=float(cfg.momentum), weight_decay=float(cfg.weight_decay),
        lr_decay_epochs=parse_decay_epochs(cfg.lr_decay_epochs), lr_decay_rate=float(cfg.lr_decay_rate),
    )


def augmenter(spec: DatasetSpec, cfg: DictConfig, data_aug: bool) -> Augmenter:
    return Augmenter(spec.mean, spec.std, data_aug=data_aug, flip=bool(cfg.get("hflip", True)),
                     crop=bool(cfg.get("aug_crop", True)), pad_mode=str(cfg.get("aug_pad_mode", "reflect")),
                     jitter=float(cfg.get("aug_jitter", 0.0)))


def images_tensor(split: ImageSplit, device: torch.device) -> torch.Tensor:
    """The split's pixels as one uint8 tensor, on the device when it fits comfortably there."""
    pixels = torch.from_numpy(np.ascontiguousarray(split.images))
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if pixels.numel() < 0.25 * free:
            return pixels.to(device)
    return pixels


def find_model(ref: object, root: Path, producers: tuple[str, ...], dataset: str | None) -> Path | None:
    """Resolve a model reference to a model file.

    ``false``/``null`` -> None; ``latest`` -> the newest finished run of one of
    ``producers`` on ``dataset``; a run name -> that run of one of ``producers``;
    a run folder -> its model.pt; a file -> itself.
    """
    if ref in (None, False, "", "false", "False", "null", "none"):
        return None
    ref = str(ref)
    if ref == "latest":
        candidates = []
        for step in producers:
            for done in (saves_dir(root) / step).glob(f"*/{DONE_FILE}"):
                info = json.loads(done.read_text())
                if dataset is None or info.get("dataset") == dataset:
                    candidates.append((info.get("finished", ""), done.stat().st_mtime, done.parent))
        if not candidates:
            raise MelaError(f"no finished {' or '.join(producers)} run on dataset {dataset} in {saves_dir(root)}; "
                            "run that step first, or give the model as a run name or path")
        return max(candidates)[2] / MODEL_FILE
    path = Path(ref).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        return _model_in(path)
    for step in producers:
        run_dir = saves_dir(root) / step / ref
        if run_dir.is_dir():
            return _model_in(run_dir)
    raise MelaError(f"model '{ref}' is neither a file, a run folder, nor a run of {', '.join(producers)} "
                    f"under {saves_dir(root)}; use latest, a run name or a path")


def _model_in(run_dir: Path) -> Path:
    model = run_dir / MODEL_FILE
    if not model.exists():
        raise MelaError(f"{run_dir} has no {MODEL_FILE}: the run did not finish; rerun it with run_name={run_dir.name}")
    return model


def publish_model(ctx: RunContext, chosen: Path) -> Path:
    """Copy the chosen checkpoint to the run's ``model.pt`` (atomically), the file later steps load."""
    tmp = ctx.run_dir / f".{MODEL_FILE}.tmp"
    shutil.copyfile(chosen, tmp)
    os.replace(tmp, ctx.run_dir / MODEL_FILE)
    return ctx.run_dir / MODEL_FILE


def eval_protocol(cfg: DictConfig, head: str = "logistic") -> EvalProtocol:
    """The test-time protocol the config asks for (``test_C``, ``use_bias``, ``is_norm``)."""
    return EvalProtocol(head=head, C=float(cfg.test_C), use_bias=bool(cfg.use_bias), lam=float(cfg.get("lam", 1e-3)),
                        is_norm=bool(cfg.is_norm))


def validator(
    ctx: RunContext, model: FeatureModel, val_split: ImageSplit, spec: DatasetSpec, protocol: EvalProtocol,
    shapes: list[TaskShape], n_tasks: int,
) -> Callable[[], dict[str, float]]:
    """Validation: mean test-time accuracy on ``n_tasks`` val tasks of each shape, keyed ``<k>shot``."""

    def run() -> dict[str, float]:
        results = evaluate_model(model, val_split, shapes, n_tasks, protocol, spec.mean, spec.std, ctx.device)
        return {f"{shape.n_shots}shot": result.overall.acc for shape, result in zip(shapes, results, strict=True)}

    return run


def validation_shapes(cfg: DictConfig) -> list[TaskShape]:
    """One val task shape per shot count in ``val_shots`` (``val_n_ways`` classes, ``n_queries`` queries)."""
    return [TaskShape(int(cfg.val_n_ways), int(k), int(cfg.n_queries)) for k in cfg.get("val_shots",
                                                                                         [cfg.val_n_shots])]


def step_validator(ctx: RunContext, model: FeatureModel, val: ImageSplit, spec: DatasetSpec,
                   cfg: DictConfig) -> Callable[[], dict[str, float]]:
    """The validator a training step's config describes."""
    return validator(ctx, model, val, spec, eval_protocol(cfg), validation_shapes(cfg), int(cfg.test_db_size))


def in_channels(split: ImageSplit) -> int:
    return int(split.images.shape[-1])
