"""Exported models: safetensors + JSON bit-identical to the model file, ONNX and TorchScript parity, refusals."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import mela
from mela.config import compose_config
from mela.engine.checkpoint import load_feature_model
from mela.errors import MelaError
from mela.inference import export
from mela.inference.model_io import load_trained_model
from mela.steps import meta_eval
from mela.workspace import saves_dir


@pytest.fixture(scope="module")
def exported(trained_model_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "model"
    return mela.export_model(trained_model_file, out, formats=["onnx", "torchscript"])


def _batch(seed=0, n=6):
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(n, 1, 16, 16)).astype(np.float32))


def test_the_safetensors_round_trip_is_bit_identical(trained_model_file, exported):
    original, _ = load_feature_model(trained_model_file, torch.device("cpu"))
    loaded, described = load_feature_model(exported, torch.device("cpu"))
    assert original.state_dict().keys() == loaded.state_dict().keys()
    for key, tensor in original.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[key]), key
    x = _batch()
    assert torch.equal(original.eval()(x), loaded.eval()(x))
    assert loaded.preprocessing == original.preprocessing


def test_the_json_describes_everything_needed_to_use_the_weights(exported, synthetic_dataset):
    described = json.loads((exported / "mela_model.json").read_text())
    assert described["format"] == "mela-model"
    assert described["architecture"] == {"backbone": "convnet4", "backbone_kwargs": {"in_channels": 1},
                                         "residual_mlp": False}
    assert (described["in_channels"], described["image_size"], described["feature_size"]) == (1, [16, 16], 64)
    assert described["preprocessing"]["mean"] == [0.35] and described["preprocessing"]["std"] == [0.4]
    assert described["step"] == "learn_meta_repr" and described["dataset_identity"] == synthetic_dataset
    assert described["mela_version"] == mela.__version__
    assert described["files"] == {"weights": "model.safetensors", "onnx": "model.onnx",
                                  "torchscript": "model.torchscript.pt"}


def test_the_onnx_graph_in_onnxruntime_gives_torchs_features(trained_model_file, exported):
    import onnxruntime

    model, _ = load_feature_model(trained_model_file, torch.device("cpu"))
    x = _batch(1, n=9)  # another batch size than the export's example: the batch axis is dynamic
    session = onnxruntime.InferenceSession(str(exported / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_features = session.run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        torch_features = model.eval()(x).numpy()
    difference = float(np.abs(onnx_features - torch_features).max())
    assert difference < 1e-4, difference


def test_the_torchscript_file_gives_the_same_features(trained_model_file, exported):
    model, _ = load_feature_model(trained_model_file, torch.device("cpu"))
    scripted = torch.jit.load(str(exported / "model.torchscript.pt"))
    x = _batch(2)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model.eval()(x), rtol=0, atol=1e-6)


def _copy(exported, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(exported, target)
    return target


def test_weights_replaced_behind_the_jsons_back_are_refused(exported, tmp_path):
    edited = _copy(exported, tmp_path)
    from safetensors.torch import load_file, save_file

    state = load_file(str(edited / "model.safetensors"))
    state[next(iter(state))] += 1
    save_file(state, str(edited / "model.safetensors"))
    with pytest.raises(MelaError, match="does not match mela_model.json"):
        load_trained_model(edited, "cpu")


def test_a_json_describing_another_architecture_is_refused(exported, tmp_path):
    edited = _copy(exported, tmp_path)
    described = json.loads((edited / "mela_model.json").read_text())
    described["architecture"]["backbone"] = "resnet12"
    (edited / "mela_model.json").write_text(json.dumps(described))
    with pytest.raises(MelaError, match="disagrees with mela_model.json, which describes a resnet12"):
        load_trained_model(edited, "cpu")
    (edited / "mela_model.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(MelaError, match="is not a mela model description"):
        load_trained_model(edited, "cpu")


def test_an_existing_folder_is_kept_and_a_failed_export_leaves_nothing(trained_model_file, tmp_path, monkeypatch):
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "mine.txt").write_text("keep me")
    with pytest.raises(MelaError, match="exists and is not empty"):
        mela.export_model(trained_model_file, occupied)
    assert (occupied / "mine.txt").read_text() == "keep me"

    def broken(*_args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "_write_onnx", broken)
    with pytest.raises(MelaError, match="No space left on device"):
        mela.export_model(trained_model_file, tmp_path / "fresh", formats=["onnx"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["occupied"]


def test_meta_eval_scores_an_exported_folder_exactly_as_its_model_file(trained_model_file, exported, workspace,
                                                                       synthetic_dataset):
    common = [f"dataset={synthetic_dataset}", "model=convnet4", "n_ways=4", "n_queries=3", "test_db_size=20",
              "progress=false"]
    rows = {}
    for name, ref in (("file", trained_model_file), ("folder", exported)):
        cfg = compose_config("meta_eval", [*common, f"pretrained_model={ref}", f"run_name={name}"])
        rows[name] = meta_eval.run(meta_eval.read_settings(cfg))["rows"]
    assert [(r["acc"], r["ci"]) for r in rows["file"]] == [(r["acc"], r["ci"]) for r in rows["folder"]]
    # An export made after this evaluation records its test accuracy.
    described = export.describe(load_trained_model(trained_model_file, "cpu"))
    assert described["test_accuracy"] is None  # the file is not in a workspace run folder
    run_model = saves_dir(workspace) / "learn_meta_repr" / "r" / "model.pt"
    run_model.parent.mkdir(parents=True)
    shutil.copy(trained_model_file, run_model)
    cfg = compose_config("meta_eval", [*common, f"pretrained_model={run_model}", "run_name=scored"])
    scored = meta_eval.run(meta_eval.read_settings(cfg))["rows"]
    recorded = export.describe(load_trained_model(run_model, "cpu"))["test_accuracy"]
    assert [row["acc"] for row in recorded] == [row["acc"] for row in scored]


def test_an_edited_preprocessing_record_is_refused_naming_the_file(exported, tmp_path):
    edited = _copy(exported, tmp_path)
    described = json.loads((edited / "mela_model.json").read_text())
    described["preprocessing"].update(channels=3, mean=[0.2] * 3, std=[0.2] * 3)
    (edited / "mela_model.json").write_text(json.dumps(described))
    with pytest.raises(MelaError, match="mela_model.json: its preprocessing has 3 channels but its convnet4 takes 1"):
        load_trained_model(edited, "cpu")
    described["preprocessing"].update(mean=[0.2])
    (edited / "mela_model.json").write_text(json.dumps(described))
    with pytest.raises(MelaError, match="mela_model.json: the recorded normalisation has 1 means"):
        load_trained_model(edited, "cpu")
