"""Backbones and heads, built by name through the registry."""

from mela.models.registry import available_models, create_model, register_model

__all__ = ["available_models", "create_model", "register_model"]
