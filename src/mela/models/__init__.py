"""Backbones and heads, built by name through the registry."""

from mela.models.registry import ModelInfo, available_models, create_model, model_info, register_model

__all__ = ["ModelInfo", "available_models", "create_model", "model_info", "register_model"]
