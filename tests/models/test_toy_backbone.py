"""A backbone added in one file (tests/models/toy_backbone.py) works everywhere a built-in one does."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch

import mela
from mela.engine.checkpoint import load_feature_model, model_payload, save_atomic
from mela.engine.precision import ComputeSettings, channels_last_auto
from mela.errors import MelaError
from mela.models import available_models, create_model, model_info, registry
from mela.models.feature_model import build_model


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register the toy backbone by importing its file, and forget it after the test."""
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    if "toy_backbone" in sys.modules:
        importlib.reload(sys.modules["toy_backbone"])
    else:
        importlib.import_module("toy_backbone")
    yield
    sys.modules.pop("toy_backbone", None)


def test_importing_the_file_registers_the_backbone_with_its_metadata(toy: None) -> None:
    assert "toy" in available_models()
    info = model_info("toy")
    assert info.description == "one conv block, for tests and as the example backbone"
    assert info.channels_last and not info.channels_last_cpu and info.min_size == 2


def test_the_toy_backbone_builds_by_name_and_checks_its_options(toy: None) -> None:
    model = create_model("toy", in_channels=1)
    assert model(torch.zeros(3, 1, 5, 7)).shape == (3, 8)
    with pytest.raises(MelaError, match="model 'toy' has no option 'widht'; valid options: in_channels, width"):
        create_model("toy", in_channels=1, widht=4)
    with pytest.raises(MelaError, match="too small for toy"):
        model(torch.zeros(1, 1, 1, 1))


def test_channels_last_auto_reads_the_registry_metadata(toy: None) -> None:
    assert channels_last_auto("cuda", "toy") and not channels_last_auto("cpu", "toy")
    assert ComputeSettings().resolve("cpu", "toy").channels_last is False
    assert channels_last_auto("cpu", "convnet4") and not channels_last_auto("cpu", "resnet12")
    assert not channels_last_auto("cuda", "residual_mlp") and not channels_last_auto("cuda", "no_such_model")
    assert not channels_last_auto("cuda", None)


def test_a_feature_model_of_the_toy_backbone_survives_save_and_load(toy: None, tmp_path: Path) -> None:
    model = build_model("toy", in_channels=1, backbone_options={"width": 4}).eval()
    assert model.feat_dim == 4 and model.spec.backbone_kwargs == {"in_channels": 1, "width": 4}
    save_atomic(model_payload(model), tmp_path / "model.pt")
    loaded, _ = load_feature_model(tmp_path / "model.pt", torch.device("cpu"))
    x = torch.randn(2, 1, 16, 16)
    assert loaded.spec == model.spec
    torch.testing.assert_close(loaded.eval()(x), model(x))


def test_mela_meta_trains_the_toy_backbone_for_one_epoch(toy: None, synthetic_dataset: str, workspace: None) -> None:
    data = mela.open_dataset(synthetic_dataset)
    result = mela.meta_train(mela.create_model("toy", in_channels=1), data, n_ways=4, n_shots=2, n_queries=2,
                             epochs=1, train_db_size=8, no_replacement=False, val_shots=(1,), val_tasks=5,
                             device="cpu", log=None)
    assert len(result.history) == 1 and result.model.spec.backbone == "toy"
