"""The user-facing configs: compose them (Hydra, shipped in ``mela.conf``) and read them into typed settings.

This package and :mod:`mela.cli` are the only places that see a ``DictConfig``;
everything below them takes typed settings or plain values.
"""

from mela.config.compose import (
    STEP_SECTIONS,
    apply,
    check_types,
    compose_config,
    compose_pipeline_step,
    config_names,
    default_config,
    strip_hydra,
)

__all__ = ["STEP_SECTIONS", "apply", "check_types", "compose_config", "compose_pipeline_step", "config_names",
           "default_config", "strip_hydra"]
