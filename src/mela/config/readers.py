"""Read a composed step config into the typed settings the library takes.

Each step's ``read_settings(cfg)`` is built from these; no function below the
config layer ever sees a ``DictConfig``. Checks that need only the settings
(contradictions, ranges) happen when the typed objects are built, so a bad value
fails before any data is loaded or any epoch is trained.
"""

from __future__ import annotations

import warnings

from omegaconf import DictConfig, OmegaConf

from mela.config.compose import default_config
from mela.config.settings import CompatWarning, compat_keys, free_keys, setting
from mela.data.augment import AugmentSettings
from mela.data.registry import DatasetRef
from mela.data.samplers import TaskShape
from mela.data.tasks import LoadOptions
from mela.engine.episodic import EpisodicSettings, RidgeLossSettings
from mela.engine.precision import ComputeSettings
from mela.engine.supervised import SupervisedSettings
from mela.engine.trainer import OptimSettings, ReportSettings, ValidationSettings, parse_decay_epochs
from mela.errors import MelaError
from mela.methods.evaluator import EvalProtocol
from mela.methods.labeler import LabelerConfig
from mela.reporting.progress import parse_auto_flag, resolve_progress
from mela.runs.store import NO_MODEL, RunSettings


def record(cfg: DictConfig) -> dict:
    """The resolved config as plain data: what a run saves as ``config.yaml``."""
    return OmegaConf.to_container(cfg, resolve=True)


def model_ref(value: object) -> str | None:
    """A model reference setting (``latest``, a run name, a path) or None for ``false`` / ``null``."""
    return None if value in NO_MODEL else str(value)


def read_run(cfg: DictConfig, step: str) -> RunSettings:
    """Where step ``step`` runs, and which of its keys a rerun may change (the settings registry's); warns about
    keys kept for the original scripts that were set (:func:`warn_compat`)."""
    warn_compat(cfg, step)
    return RunSettings(workspace=cfg.get("workspace"), run_name=cfg.get("run_name"),
                       device=str(cfg.get("device", "auto")), seed=int(cfg.seed), trial=str(cfg.get("trial", "0")),
                       free_keys=free_keys(step))


def warn_compat(cfg: DictConfig, step: str) -> None:
    """A :class:`CompatWarning` for each key ``step`` accepts only for the original scripts' command lines that
    differs from the step's default: it has no effect (Python shows each such warning once)."""
    keys = compat_keys(step)
    if not keys:
        return
    defaults = default_config(step)
    for key in sorted(keys):
        if key in cfg and key in defaults and cfg[key] != defaults[key]:
            warnings.warn(f"{key}={cfg[key]} has no effect in {step} (kept for the original scripts' command "
                          f"lines: {setting(key).compat_reason(step)})", CompatWarning, stacklevel=3)


def read_dataset(cfg: DictConfig) -> DatasetRef:
    """The data set a step runs on; ``image_size`` null means 84 for ``custom`` and the collection's own size
    for ``tasks`` (a collection of mixed sizes then goes to 84)."""
    size = cfg.get("image_size")
    options = LoadOptions(None if size is None else int(size), cfg.get("tasks_truth"),
                          bool(cfg.get("skip_bad_tasks", False)))
    ref = DatasetRef(str(cfg.dataset), cfg.get("custom_path"), cfg.get("custom_split"), options, int(cfg.seed),
                     cfg.get("tasks_path"), float(cfg.get("tasks_holdout", 0.1)), float(cfg.get("tasks_val", 0.05)))
    if ref.name == "tasks" and not ref.tasks_path:
        raise MelaError("dataset=tasks needs tasks_path=DIR (a folder of task folders, or a manifest .csv); make "
                        "one with `mela tasks make --from glyphs --out DIR`")
    if ref.tasks_path and ref.name != "tasks":
        raise MelaError(f"tasks_path is given but dataset={ref.name}; set dataset=tasks to train on the collection")
    return ref


def read_feat_dim(cfg: DictConfig) -> int | None:
    value = cfg.get("feat_dim")
    return None if value in (None, "null") else int(value)


def read_model_options(cfg: DictConfig, model_key: str = "model") -> dict:
    """``model_options``: keyword options for the backbone ``cfg[model_key]`` builds, checked against its factory
    (an unknown option is a one-line error listing the valid ones); ``{}`` keeps the factory's defaults."""
    from mela.models.registry import check_model_options

    value = cfg.get("model_options")
    if value is None:
        return {}
    options = OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value
    if not isinstance(options, dict):
        raise MelaError(f"model_options must be a mapping such as {{hidden: 32}}, got {options!r}")
    if "in_channels" in options:
        raise MelaError("model_options cannot set in_channels: it follows from the data's images")
    check_model_options(str(cfg[model_key]), options)
    return options


def read_shape(cfg: DictConfig) -> TaskShape:
    for key in ("n_ways", "val_n_ways"):
        if key in cfg and int(cfg[key]) < 2:
            raise MelaError(f"{key} must be at least 2, got {cfg[key]}")
    return TaskShape(int(cfg.n_ways), int(cfg.n_shots), int(cfg.n_queries))


def read_optim(cfg: DictConfig) -> OptimSettings:
    return OptimSettings(
        epochs=int(cfg.epochs), learning_rate=float(cfg.learning_rate), sgd=bool(cfg.SGD),
        momentum=float(cfg.momentum), weight_decay=float(cfg.weight_decay),
        lr_decay_epochs=parse_decay_epochs(cfg.lr_decay_epochs), lr_decay_rate=float(cfg.lr_decay_rate),
    )


def read_protocol(cfg: DictConfig, head: str = "logistic") -> EvalProtocol:
    """The test-time protocol the config asks for (``test_C``, ``use_bias``, ``is_norm``)."""
    protocol = EvalProtocol(head=head, C=float(cfg.test_C), use_bias=bool(cfg.use_bias),
                            lam=float(cfg.get("lam", 1e-3)), is_norm=bool(cfg.is_norm))
    protocol.head_factory()  # an unknown head fails here, before anything loads
    return protocol


def read_validation(cfg: DictConfig) -> ValidationSettings:
    """One val task shape per shot count in ``val_shots`` (``val_n_ways`` classes, ``n_queries`` queries)."""
    shots = [int(k) for k in cfg.get("val_shots", [cfg.val_n_shots])]
    shapes = tuple(TaskShape(int(cfg.val_n_ways), k, int(cfg.n_queries)) for k in shots)
    return ValidationSettings(shapes, int(cfg.test_db_size), read_protocol(cfg), int(cfg.val_n_shots))


def read_augment(cfg: DictConfig, key: str = "data_aug") -> AugmentSettings:
    return AugmentSettings(enabled=bool(cfg[key]), flip=bool(cfg.get("hflip", True)), crop=bool(cfg.aug_crop),
                           pad_mode=str(cfg.aug_pad_mode), jitter=float(cfg.aug_jitter))


def read_progress(cfg: DictConfig) -> bool:
    """``progress``: ``auto`` draws bars only when stderr is a terminal (CI logs and pipes get plain lines)."""
    return resolve_progress(cfg.progress)


def read_report(cfg: DictConfig) -> ReportSettings:
    """``tensorboard`` (auto, true, false) and ``plots``: what a training step leaves beside metrics.csv."""
    return ReportSettings(tensorboard=cfg.tensorboard, plots=bool(cfg.plots))


def read_compute(cfg: DictConfig) -> ComputeSettings:
    """``precision`` (auto, fp32, bf16) and ``channels_last`` (auto, true, false); resolved later, on the device."""
    return ComputeSettings(str(cfg.get("precision", "auto")),
                           parse_auto_flag("channels_last", cfg.get("channels_last", "auto")))


def read_episodic(cfg: DictConfig) -> EpisodicSettings:
    if cfg.sample_shape != "few_shot":
        raise MelaError(f"{cfg.logger_name} trains on few_shot tasks; sample_shape={cfg.sample_shape} is not "
                        "possible here (flat tasks are what learn_labeler reads)")
    loss = RidgeLossSettings(float(cfg.lam), bool(cfg.normalize_lam), bool(cfg.extra_reg), str(cfg.hinge_mask))
    return EpisodicSettings(
        shape=read_shape(cfg), optim=read_optim(cfg), validation=read_validation(cfg), augment=read_augment(cfg),
        loss=loss, no_replacement=bool(cfg.no_replacement), fixed_db=bool(cfg.fixed_db),
        train_db_size=int(cfg.train_db_size), tasks_per_step=int(cfg.tasks_per_step), rotate_aug=bool(cfg.rotate_aug),
        seed=int(cfg.seed), progress=read_progress(cfg), report=read_report(cfg), compute=read_compute(cfg),
    )


def read_supervised(cfg: DictConfig, data_aug_key: str = "data_aug", rotate_key: str = "rotate_aug"
                    ) -> SupervisedSettings:
    return SupervisedSettings(
        optim=read_optim(cfg), validation=read_validation(cfg), batch_size=int(cfg.batch_size),
        augment=read_augment(cfg, data_aug_key), rotate_aug=bool(cfg[rotate_key]), seed=int(cfg.seed),
        progress=read_progress(cfg), report=read_report(cfg), compute=read_compute(cfg),
    )


def read_labeler(cfg: DictConfig) -> LabelerConfig:
    return LabelerConfig(K=int(cfg.K), std_factor=float(cfg.std_factor), mode=str(cfg.labeler),
                         max_passes=int(cfg.max_passes), spawn_factor=float(cfg.spawn_factor),
                         merge_factor=float(cfg.merge_factor), merge_risk=float(cfg.merge_risk),
                         count_check=bool(cfg.count_check))
