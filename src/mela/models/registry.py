"""Build backbones by name, so configs say ``model=resnet12`` rather than import paths.

A factory registers itself with :func:`register_model`, together with the facts other
code needs about it (timm's manner): a one-line description for ``mela models``, whether
its convolutions gain from the channels-last layout, its smallest input size. Other code
asks :func:`model_info` instead of keeping its own lists of backbone names, so a new
backbone is one file. :func:`create_model` checks the keyword arguments against the
factory's signature so a typo in a config fails with a one-line :class:`MelaError`
instead of a ``TypeError`` deep in a constructor.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn

from mela.errors import MelaError

Factory = TypeVar("Factory", bound=Callable[..., nn.Module])



@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about a model besides how to build it.

    Attributes:
        name: the registered name (``model=<name>``).
        factory: the function :func:`create_model` calls.
        description: one line for ``mela models`` (the factory docstring's first line unless given).
        channels_last: its convolutions take (B, C, H, W) images and gain from the channels-last layout on a GPU
            (what ``channels_last=auto`` turns on under CUDA; see :mod:`mela.engine.precision`).
        channels_last_cpu: its training step measured faster in channels-last on the CPU too.
        min_size: the smallest image side it accepts, or None if unknown or not an image model.
    """

    name: str
    factory: Callable[..., nn.Module]
    description: str = ""
    channels_last: bool = False
    channels_last_cpu: bool = False
    min_size: int | None = None


_MODELS: dict[str, ModelInfo] = {}

# Modules whose import registers the built-in models.
_BUILTIN_MODULES = (
    "mela.models.convnet4",
    "mela.models.mlp",
    "mela.models.resnet12",
    "mela.models.resnet18",
    "mela.models.seresnet12",
    "mela.models.wrn",
)


def register_model(
    name: str,
    *,
    description: str | None = None,
    channels_last: bool = False,
    channels_last_cpu: bool = False,
    min_size: int | None = None,
) -> Callable[[Factory], Factory]:
    """Decorator: make the factory it wraps buildable as ``create_model(name, ...)``, with its metadata.

    The keyword arguments are the :class:`ModelInfo` fields; ``description`` defaults to the first line of the
    factory's docstring.
    """
    if channels_last_cpu and not channels_last:
        raise ValueError(f"model '{name}': channels_last_cpu needs channels_last")

    def decorator(factory: Factory) -> Factory:
        existing = _MODELS.get(name)
        same = existing is not None and (
            existing.factory.__module__ == factory.__module__
            and existing.factory.__qualname__ == factory.__qualname__
        )
        if existing is not None and not same:
            raise ValueError(f"model '{name}' is registered twice")
        doc = (inspect.getdoc(factory) or "").strip().splitlines()
        _MODELS[name] = ModelInfo(
            name=name,
            factory=factory,
            description=description if description is not None else (doc[0] if doc else ""),
            channels_last=channels_last,
            channels_last_cpu=channels_last_cpu,
            min_size=min_size,
        )
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


def model_info(name: str) -> ModelInfo:
    """The registry's facts about model ``name``; an unknown name raises :class:`MelaError` listing the valid ones."""
    check_model_name(name)
    return _MODELS[name]


def check_model_options(name: str, options: Mapping[str, object]) -> None:
    """Fail, listing the valid ones, if model ``name`` takes no option of one of these names (builds nothing)."""
    params = inspect.signature(model_info(name).factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    valid = [p for p, spec in params.items() if spec.kind is not inspect.Parameter.VAR_POSITIONAL]
    if not takes_any:
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise MelaError(
                f"model '{name}' has no option '{unknown[0]}'; valid options: {', '.join(valid) or '(none)'}"
            )


def create_model(name: str, **kwargs: object) -> nn.Module:
    """Build model ``name``; unknown names and unknown or missing options raise :class:`MelaError`."""
    check_model_options(name, kwargs)
    factory = model_info(name).factory
    params = inspect.signature(factory).parameters
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
