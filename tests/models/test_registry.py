"""Model registry: names, options and the errors a config typo produces."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mela.errors import MelaError
from mela.models import available_models, create_model, register_model, registry
from mela.models.feature_model import build_model

BUILTIN = ["convnet4", "residual_mlp", "resnet12", "resnet18", "seresnet12", "wrn_28_10"]


@pytest.fixture
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let a test register models without leaking them into the others."""
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))


def test_available_models_lists_every_builtin_name_sorted() -> None:
    assert available_models() == BUILTIN


def test_unknown_model_name_raises_a_mela_error_listing_the_valid_names() -> None:
    with pytest.raises(MelaError) as info:
        create_model("resnet13")
    assert str(info.value) == f"unknown model 'resnet13'; valid names: {', '.join(BUILTIN)}"


def test_unknown_option_raises_a_mela_error_naming_the_option_and_the_model() -> None:
    with pytest.raises(MelaError) as info:
        create_model("convnet4", hiden=32)
    message = str(info.value)
    assert message.startswith("model 'convnet4' has no option 'hiden'")
    assert "valid options: in_channels, hidden" in message


def test_missing_required_option_raises_a_mela_error_naming_it() -> None:
    with pytest.raises(MelaError, match="model 'residual_mlp' needs option 'dim'"):
        create_model("residual_mlp")


def test_create_model_passes_options_to_the_factory() -> None:
    model = create_model("convnet4", in_channels=1, hidden=8)
    assert model.feat_dim == 8
    assert model(torch.zeros(2, 1, 16, 16)).shape == (2, 8)


def test_registered_factory_is_buildable_by_name(scratch_registry: None) -> None:
    @register_model("tiny_linear")
    def tiny_linear(width: int = 3) -> nn.Module:
        return nn.Linear(width, 2)

    assert "tiny_linear" in available_models()
    model = create_model("tiny_linear", width=5)
    assert isinstance(model, nn.Linear)
    assert model.in_features == 5


def test_factory_taking_any_keyword_accepts_every_option(scratch_registry: None) -> None:
    @register_model("open_model")
    def open_model(**kwargs: int) -> nn.Module:
        return nn.Linear(kwargs["a"], kwargs["b"])

    assert create_model("open_model", a=2, b=7).out_features == 7


def test_registering_a_different_factory_under_a_taken_name_is_an_error(scratch_registry: None) -> None:
    def other() -> nn.Module:
        return nn.Identity()

    with pytest.raises(ValueError, match="'convnet4' is registered twice"):
        register_model("convnet4")(other)


def test_feat_dim_follows_the_model_and_a_contradiction_is_refused():
    model = build_model("convnet4", 1, None)
    assert model.feat_dim == 64
    assert build_model("convnet4", 1, 64).feat_dim == 64
    with pytest.raises(MelaError, match="feat_dim=640 contradicts model convnet4"):
        build_model("convnet4", 1, 640)


def test_every_model_has_its_metadata_and_mela_models_prints_name_and_description(capsys) -> None:
    from mela.cli import main
    from mela.models import model_info

    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == BUILTIN
    for name, line in zip(BUILTIN, lines, strict=True):
        info = model_info(name)
        assert info.description and line.endswith(info.description)
    assert model_info("convnet4").channels_last_cpu and model_info("convnet4").min_size == 16
    assert not model_info("residual_mlp").channels_last
    assert all(model_info(n).channels_last for n in BUILTIN if n != "residual_mlp")
    with pytest.raises(MelaError, match="unknown model 'nope'; valid names: convnet4, "):
        model_info("nope")


def test_metadata_other_than_the_known_fields_is_refused(scratch_registry: None) -> None:
    with pytest.raises(TypeError):
        register_model("odd", colour="blue")  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="channels_last_cpu needs channels_last"):
        register_model("odd", channels_last_cpu=True)
