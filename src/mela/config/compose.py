"""Compose the user-facing Hydra configs (shipped in ``mela.conf``) with command-line overrides."""

from __future__ import annotations

from importlib import resources

from hydra import compose, initialize_config_module
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mela.config.settings import AUTO_FLAG, MODEL_REF, STEP_NAMES, names_of_type, pipeline_feeds
from mela.errors import MelaError

CONFIG_MODULE = "mela.conf"


def _one_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def compose_config(name: str, overrides: list[str] | None = None) -> DictConfig:
    """The resolved config ``name`` with ``key=value`` overrides; bad overrides are one-line errors."""
    overrides = list(overrides or [])
    command = f"mela {name.replace('_', '-')}"
    overrides = [_add_to_options(o) for o in overrides]
    if name.startswith("pipeline"):
        overrides = [_add_to_step_section(o, default_config(name)) for o in overrides]
        command = f"mela pipeline --config-name {name}"
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base=None):
            cfg = compose(config_name=name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        hint = f"; to run each value, add -m: {command} -m KEY=A,B" if "Ambiguous value" in str(exc) else ""
        raise MelaError(f"bad setting for {name}: {_one_line(exc)}{hint} (see `{command} --help`)") from exc
    cfg = strip_hydra(cfg)
    if overrides:
        check_types(default_config(name), cfg)
    return cfg


def _add_to_options(override: str) -> str:
    """``model_options.hidden=32`` or ``model_options={hidden: 32}``: the (empty by default) mapping gets the key.

    The model's factory checks the key when the config is read (:func:`mela.config.readers.read_model_options`).
    """
    if override.startswith(("model_options.", "model_options=")):
        return "++" + override
    return override


STEP_SECTIONS = STEP_NAMES  # a pipeline config has one section per step


def _add_to_step_section(override: str, defaults: DictConfig) -> str:
    """``learn_meta_repr.epochs=2`` on a pipeline: a new key of a step section is added, not refused.

    The step's own config checks the key when the pipeline composes that step.
    """
    key = override.split("=", 1)[0]
    section, _, leaf = key.partition(".")
    known = defaults.get(section) or {}
    if section in STEP_SECTIONS and leaf and not override.startswith(("+", "~")) and leaf not in known:
        return "+" + override
    return override


def default_config(name: str) -> DictConfig:
    """The shipped defaults of config ``name``, read without Hydra (safe inside a running ``@hydra.main``)."""
    path = resources.files(CONFIG_MODULE).joinpath(f"{name}.yaml")
    if not path.is_file():
        raise MelaError(f"unknown config '{name}'; valid configs: {', '.join(config_names())}")
    cfg = OmegaConf.create(path.read_text())
    for key in ("hydra", "defaults"):
        cfg.pop(key, None)
    return cfg


def config_names() -> list[str]:
    """Names of the shipped configs (the five steps and the pipelines)."""
    return sorted(p.name[:-5] for p in resources.files(CONFIG_MODULE).iterdir() if p.name.endswith(".yaml"))


_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
AUTO_FLAGS = names_of_type(AUTO_FLAG)  # auto, true or false: the readers check the text
MODEL_REFS = names_of_type(MODEL_REF)  # false (none) or a model reference


def check_types(defaults: DictConfig, cfg: DictConfig) -> None:
    """Refuse a value whose type differs from the default's (``n_shots=abc``), in one line."""
    for key, default in defaults.items():
        value = cfg.get(key)
        if default is None or value is None or isinstance(default, (dict, list)) or not hasattr(defaults, key):
            continue
        expected = type(default)
        ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if expected is str and isinstance(value, (int, float)) and not isinstance(value, bool):
            ok = True  # e.g. trial=3 or lr_decay_epochs=10
        if key in MODEL_REFS and isinstance(value, str):
            ok = True  # false (none) or a model reference
        if key in AUTO_FLAGS and isinstance(value, (bool, str)):
            ok = True  # progress=true, as before auto existed
        if key == "model_options":
            continue  # any mapping; its reader checks it against the model's factory
        if key == "precision" and isinstance(value, bool):
            ok = True  # the reader refuses it, listing the valid values
        if not ok:
            raise MelaError(f"{key} must be {_KINDS.get(expected, expected.__name__)}, got {value!r}")


def strip_hydra(cfg: DictConfig) -> DictConfig:
    """The job's own settings, without the ``hydra`` node; struct mode so typos are errors."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    cfg.pop("hydra", None)
    OmegaConf.set_struct(cfg, True)
    return cfg


def apply(cfg: DictConfig, values: dict, where: str = "") -> DictConfig:
    """``cfg`` with ``values`` merged in; unknown keys are one-line errors (``where`` names the config)."""
    try:
        return OmegaConf.merge(cfg, values)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "key", None)
        what = f"'{key}' is not a {where} setting" if key and where else _one_line(exc)
        raise MelaError(f"bad setting: {what} (see `mela {where.replace('_', '-')} --help`)") from exc


def compose_pipeline_step(cfg: DictConfig, step: str, run_name: str, extra: dict | None = None) -> DictConfig:
    """Step ``step``'s own config, overlaid with the pipeline's shared keys, its section and ``extra``.

    The shared keys are the settings registry's ``feeds`` (:func:`mela.config.settings.pipeline_feeds`): e.g.
    ``n_ways`` sets every step's ``n_ways`` and ``val_n_ways``, ``val_db_size`` the training steps' ``test_db_size``.
    """
    base = compose_config(step)
    if "model_options" in base:
        OmegaConf.set_struct(base.model_options, False)  # its keys are the model's options, checked when read
    shared = {key: cfg[name] for name, key in pipeline_feeds(step, base) if name in cfg}
    section = cfg.get(step)
    section = {} if section is None else OmegaConf.to_container(section, resolve=True)
    composed = apply(base, {**shared, **section, "run_name": run_name, **(extra or {})}, step)
    try:
        check_types(default_config(step), composed)
    except MelaError as exc:
        raise MelaError(f"pipeline section {step}: {exc}") from exc
    return composed
