"""Checkpoints: mela's own files load with weights_only, unsafe or damaged files are one line, writes are atomic."""

from __future__ import annotations

import errno
import os
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mela.engine import checkpoint
from mela.engine.checkpoint import (
    load_checkpoint,
    load_feature_model,
    model_payload,
    save_atomic,
    state_dict_mismatch,
)
from mela.engine.trainer import OptimSettings, Trainer
from mela.errors import MelaError
from mela.models.feature_model import Classifier, FeatureModel, ModelSpec


def _model(hidden: int = 8, seed: int = 0) -> FeatureModel:
    torch.manual_seed(seed)
    return FeatureModel(ModelSpec("convnet4", {"in_channels": 1, "hidden": hidden}))


@pytest.mark.parametrize("sgd", [True, False])
def test_every_file_the_trainer_writes_loads_with_weights_only(tmp_path: Path, sgd: bool) -> None:
    model = _model()
    classifier = Classifier(model, [5, 3])  # two heads, as sup_baseline's multi-head runs
    settings = OptimSettings(epochs=2, learning_rate=0.01, sgd=sgd, lr_decay_epochs=(1,))
    trainer = Trainer(tmp_path, model, classifier, settings, lambda: {"1shot": 40.0, "5shot": 55.5},
                      log=lambda _line: None, metadata={"step": "sup_baseline", "dataset": "glyphs"})

    def epoch(index: int) -> dict[str, float]:
        x = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(index))
        loss = sum(F.cross_entropy(o, torch.zeros(4, dtype=torch.long)) for o in classifier(x))
        trainer.optimizer.zero_grad()
        loss.backward()
        trainer.optimizer.step()
        return {"loss": loss.item()}

    trainer.fit(epoch)
    written = sorted(p.name for p in tmp_path.glob("*.pt"))
    assert written == ["best_1shot.pt", "best_5shot.pt", "final.pt", "last.pt"]
    for name in written:
        loaded = torch.load(tmp_path / name, weights_only=True)
        assert isinstance(loaded, dict)
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert last["epoch"] == 2 and last["best"] == {"1shot": 40.0, "5shot": 55.5}
    rebuilt, payload = load_feature_model(tmp_path / "final.pt", torch.device("cpu"))
    assert payload["dataset"] == "glyphs" and payload["epoch"] == 2
    for key, value in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value)


class _Payload:
    """Unpickling this calls ``factory(*args)``: what a malicious checkpoint does."""

    def __init__(self, factory, *args) -> None:
        self.factory, self.args = factory, args

    def __reduce__(self):
        return self.factory, self.args


@pytest.mark.parametrize("writer", ["torch", "pickle"])
@pytest.mark.parametrize("factory", ["os.system", "open"])
def test_a_reduce_payload_is_refused_in_one_line_and_never_runs(tmp_path: Path, writer: str, factory: str) -> None:
    marker = tmp_path / "payload_ran"
    evil = _Payload(os.system, f"touch {marker}") if factory == "os.system" else _Payload(open, str(marker), "w")
    path = tmp_path / "model.pt"
    blob = {"spec": {"backbone": "convnet4"}, "state_dict": {}, "extra": evil}
    if writer == "torch":
        torch.save(blob, path)
    else:
        with open(path, "wb") as handle:
            pickle.dump(blob, handle, protocol=2)
    with pytest.raises(MelaError) as caught:
        load_feature_model(path, torch.device("cpu"))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"checkpoint {path} refers to ")
    assert "mela only loads tensors and plain data" in message
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", "truncated"])
def test_a_damaged_checkpoint_is_one_line_asking_to_rerun_the_step(tmp_path: Path, content) -> None:
    path = tmp_path / "last.pt"
    if content == "truncated":
        save_atomic({"w": torch.ones(1000)}, path)
        content = path.read_bytes()[:500]
    path.write_bytes(content)
    with pytest.raises(MelaError, match=r"is unreadable \(\w+\); it is damaged or not a torch file: delete it"):
        load_checkpoint(path)


@pytest.mark.parametrize("error", [RuntimeError("CUDA error: out of memory"), MemoryError()])
def test_errors_that_are_not_about_the_file_are_not_reported_as_a_damaged_file(tmp_path: Path, monkeypatch,
                                                                               error) -> None:
    path = tmp_path / "model.pt"
    save_atomic({"w": torch.ones(3)}, path)

    def failing_load(*_args, **_kwargs):
        raise error

    monkeypatch.setattr(checkpoint.torch, "load", failing_load)
    with pytest.raises(type(error)) as caught:
        load_checkpoint(path)
    assert not isinstance(caught.value, MelaError)


def test_a_full_disk_while_saving_is_one_line_naming_the_path_and_leaves_no_temporary_file(tmp_path: Path,
                                                                                          monkeypatch) -> None:
    path = tmp_path / "last.pt"
    save_atomic({"epoch": 1}, path)

    def full_disk(obj, handle):
        handle.write(b"partial bytes")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(MelaError) as caught:
        save_atomic({"epoch": 2}, path)
    assert str(caught.value) == (f"cannot write {path} (No space left on device); check free disk space and that "
                                 f"{tmp_path} is a writable folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    monkeypatch.undo()
    assert load_checkpoint(path) == {"epoch": 1}  # the previous file is intact


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_real_full_device_while_saving_is_one_line_and_leaves_no_temporary_file(tmp_path: Path,
                                                                                  monkeypatch) -> None:
    # torch.save into a file on a full device: the temporary file is opened on /dev/full (every write fails).
    def open_full(file, mode="r", *args, **kwargs):
        Path(file).touch()  # the temporary file exists, as it would on a real disk
        return open("/dev/full", mode, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "open", open_full, raising=False)
    path = tmp_path / "model.pt"
    with pytest.raises(MelaError, match=r"cannot write .*model.pt \(No space left on device\)"):
        save_atomic(model_payload(_model()), path)
    assert list(tmp_path.iterdir()) == []


def test_saving_under_a_file_where_a_folder_should_be_is_one_line_naming_the_path(tmp_path: Path) -> None:
    (tmp_path / "runs").write_text("a file")
    target = tmp_path / "runs" / "x" / "model.pt"
    with pytest.raises(MelaError, match=r"cannot write .*runs/x/model.pt \((File exists|Not a directory)\)"):
        save_atomic({"a": 1}, target)


def test_an_exception_while_saving_removes_the_temporary_file(tmp_path: Path, monkeypatch) -> None:
    def interrupted(obj, handle):
        handle.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"a": 1}, tmp_path / "model.pt")
    assert list(tmp_path.iterdir()) == []


def test_a_model_file_whose_weights_do_not_fit_its_spec_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    payload = model_payload(_model(hidden=8))
    payload["state_dict"] = _model(hidden=16).state_dict()
    save_atomic(payload, path)
    with pytest.raises(MelaError) as caught:
        load_feature_model(path, torch.device("cpu"))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: its weights do not fit its spec convnet4 (")
    assert "the spec needs (8, 1, 3, 3)" in message and "is (16, 1, 3, 3)" in message


def test_a_model_file_with_an_unknown_backbone_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    save_atomic({"spec": {"backbone": "nonesuch"}, "state_dict": {}}, path)
    with pytest.raises(MelaError, match=r"model.pt: its model spec is unusable \(unknown model 'nonesuch'"):
        load_feature_model(path, torch.device("cpu"))


def test_state_dict_mismatch_names_missing_unexpected_and_reshaped_entries() -> None:
    expected = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}
    assert state_dict_mismatch(expected, {"a": torch.ones(2, 3), "b": torch.ones(4)}) is None
    assert state_dict_mismatch(expected, {"a": torch.ones(3, 2), "c": torch.ones(1)}) == (
        "1 missing (e.g. b); 1 unexpected (e.g. c); a is (3, 2), the spec needs (2, 3)")
    assert state_dict_mismatch(expected, {"a": [1, 2], "b": torch.ones(4)}) == "a is a list, not a tensor"
