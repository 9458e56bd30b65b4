"""Build backbones by name, so configs say ``model=resnet12`` rather than import paths.

A factory registers itself with :func:`register_model`; :func:`create_model` checks
the keyword arguments against the factory's signature so a typo in a config fails
with a one-line :class:`MelaError` instead of a ``TypeError`` deep in a constructor.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

from mela.errors import MelaError

Factory = TypeVar("Factory", bound=Callable[..., nn.Module])

_MODELS: dict[str, Callable[..., nn.Module]] = {}

# Modules whose import registers the built-in models.
_BUILTIN_MODULES = (
    "mela.models.convnet4",
    "mela.models.mlp",
    "mela.models.resnet12",
    "mela.models.resnet18",
    "mela.models.seresnet12",
    "mela.models.wrn",
)


def register_model(name: str) -> Callable[[Factory], Factory]:
    """Decorator: make the factory it wraps buildable as ``create_model(name, ...)``."""

    def decorator(factory: Factory) -> Factory:
        existing = _MODELS.get(name)
        same = existing is not None and (
            existing.__module__ == factory.__module__ and existing.__qualname__ == factory.__qualname__
        )
        if existing is not None and not same:
            raise ValueError(f"model '{name}' is registered twice")
        _MODELS[name] = factory
        return factory

    return decorator


def _ensure_builtins() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def available_models() -> list[str]:
    """Names of every registered model, sorted."""
    _ensure_builtins()
    return sorted(_MODELS)


def check_model_name(name: str) -> None:
    """Fail, listing the valid names, if no model is registered as ``name`` (without building anything)."""
    _ensure_builtins()
    if name not in _MODELS:
        raise MelaError(f"unknown model '{name}'; valid names: {', '.join(sorted(_MODELS))}")


def create_model(name: str, **kwargs: object) -> nn.Module:
    """Build model ``name``; unknown names and unknown or missing options raise :class:`MelaError`."""
    check_model_name(name)
    factory = _MODELS[name]
    params = inspect.signature(factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    valid = [p for p, spec in params.items() if spec.kind is not inspect.Parameter.VAR_POSITIONAL]
    if not takes_any:
        unknown = sorted(set(kwargs) - set(valid))
        if unknown:
            raise MelaError(
                f"model '{name}' has no option '{unknown[0]}'; valid options: {', '.join(valid) or '(none)'}"
            )
    missing = [
        p
        for p, spec in params.items()
        if spec.default is inspect.Parameter.empty
        and spec.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        and p not in kwargs
    ]
    if missing:
        raise MelaError(f"model '{name}' needs option '{missing[0]}'; pass it, e.g. model.{missing[0]}=...")
    return factory(**kwargs)


def check_images(x: torch.Tensor, model_name: str, in_channels: int, min_size: int) -> None:
    """Fail early, in words, on input a backbone cannot take (wrong rank, channels or too small).

    A shape check only: it costs nothing next to the convolutions and replaces
    torch's "output size is too small" errors raised deep inside the network.
    """
    if x.dim() != 4:
        raise MelaError(
            f"{model_name} takes a (batch, channels, height, width) batch, got a tensor of shape {tuple(x.shape)}"
        )
    if x.shape[1] != in_channels:
        raise MelaError(
            f"input has {x.shape[1]} channels but {model_name} was built for {in_channels}; "
            f"create it with in_channels={x.shape[1]}"
        )
    height, width = x.shape[-2:]
    if height < min_size or width < min_size:
        raise MelaError(
            f"input {height}x{width} is too small for {model_name}: it needs at least {min_size}x{min_size}"
        )


def init_conv_bn(model: nn.Module, nonlinearity: str = "relu") -> None:
    """The standard initialisation every backbone uses: Kaiming (fan-out) convolutions, BatchNorm at identity."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity=nonlinearity)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
