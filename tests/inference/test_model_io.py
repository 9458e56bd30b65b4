"""Loading a trained model in every form, with the preprocessing it was trained with."""

from __future__ import annotations

import shutil

import pytest
import torch

import mela
from mela.engine.checkpoint import load_checkpoint, save_atomic
from mela.errors import MelaError
from mela.inference.model_io import load_trained_model, resolve_model
from mela.workspace import saves_dir


def test_a_step_records_the_preprocessing_and_identity_of_its_training_data(trained_model_file, synthetic_dataset):
    payload = load_checkpoint(trained_model_file)
    assert payload["preprocessing"]["image_size"] == [16, 16]
    assert payload["preprocessing"]["channels"] == 1
    assert payload["preprocessing"]["mean"] == [0.35] and payload["preprocessing"]["std"] == [0.4]
    assert payload["dataset"] == synthetic_dataset and payload["dataset_identity"] == synthetic_dataset
    model = mela.load_model(trained_model_file)
    assert model.preprocessing == mela.Preprocessing((16, 16), 1, (0.35,), (0.4,))


def _fake_runs(workspace, model_file, name="demo"):
    """A finished pipeline run: its folder and the step runs of the same name."""
    saves = saves_dir(workspace)
    for step in ("learn_meta_repr", "learn_labeler"):
        (saves / step / name).mkdir(parents=True)
        shutil.copy(model_file, saves / step / name / "model.pt")
    (saves / "pipeline" / name).mkdir(parents=True)
    (saves / "pipeline" / name / "results.json").write_text("{}")
    return saves


def test_a_run_name_shared_by_a_pipeline_means_its_mela_model_and_says_so(trained_model_file, workspace):
    saves = _fake_runs(workspace, trained_model_file)
    path, notes = resolve_model("demo")
    assert path == saves / "learn_labeler" / "demo" / "model.pt"
    assert "pipeline run demo: using its mela model" in notes[0]
    assert resolve_model("learn_meta_repr/demo")[0] == saves / "learn_meta_repr" / "demo" / "model.pt"
    assert resolve_model(saves / "pipeline" / "demo")[0] == path
    assert resolve_model(saves / "learn_meta_repr" / "demo")[0] == saves / "learn_meta_repr" / "demo" / "model.pt"
    with pytest.raises(MelaError, match="model 'nothing' is not a model file, an exported model folder"):
        resolve_model("nothing")


def _legacy(model_file, tmp_path, dataset):
    payload = load_checkpoint(model_file)
    del payload["preprocessing"], payload["dataset_identity"]
    payload["dataset"] = dataset
    path = tmp_path / f"legacy_{dataset}.pt"
    save_atomic(payload, path)
    return path


def test_an_old_model_file_gets_its_data_sets_statistics_with_a_note(trained_model_file, tmp_path, synthetic_dataset):
    trained = load_trained_model(_legacy(trained_model_file, tmp_path, synthetic_dataset), "cpu")
    assert trained.preprocessing == mela.Preprocessing((16, 16), 1, (0.35,), (0.4,))
    assert "predates recorded preprocessing; using data set synthetic_test's statistics (16x16" in trained.notes[-1]


def test_an_old_model_file_of_an_unknown_data_set_is_refused_for_raw_images_but_still_loads(trained_model_file,
                                                                                             tmp_path):
    legacy = _legacy(trained_model_file, tmp_path, "someone_elses")
    with pytest.raises(MelaError, match="predates recorded preprocessing .* 'someone_elses' is not a registered"):
        load_trained_model(legacy, "cpu")
    model = mela.load_model(legacy, "cpu")
    assert model.preprocessing is None
    with pytest.raises(MelaError, match="records no preprocessing"):
        mela.embed(model, [torch.zeros(16, 16, dtype=torch.uint8).numpy()])


def test_a_torch_file_that_is_not_a_mela_model_is_one_line(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(MelaError, match="is not a mela model file"):
        load_trained_model(path, "cpu")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(MelaError, match="unreadable"):
        load_trained_model(text, "cpu")
