"""The shared training loop: lr schedule, resume from last.pt, best checkpoints, divergence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mela.engine.trainer import OptimSettings, ReportSettings, Trainer, learning_rate_at, parse_decay_epochs
from mela.errors import MelaError
from mela.models.feature_model import FeatureModel, ModelSpec


@pytest.mark.parametrize(("text", "expected"), [("17,22", (17, 22)), (" 17, 22 ", (17, 22)), ("30", (30,)),
                                                ("", ()), (5, (5,)), ([35, 43], (35, 43))])
def test_parse_decay_epochs_reads_the_reference_format_ints_and_lists(text, expected) -> None:
    assert parse_decay_epochs(text) == expected


@pytest.mark.parametrize("text", ["17;22", "a,b", "17.5"])
def test_parse_decay_epochs_rejects_malformed_text_with_a_mela_error(text: str) -> None:
    with pytest.raises(MelaError, match="17,22"):
        parse_decay_epochs(text)


def test_learning_rate_at_follows_the_reference_rule_of_one_decay_per_passed_decay_epoch() -> None:
    settings = OptimSettings(epochs=25, learning_rate=0.05, lr_decay_epochs=(17, 22), lr_decay_rate=0.1)
    # Reference: lr * rate ** sum(epoch_1based > e); epoch_1based = epoch + 1.
    expected = {0: 0.05, 15: 0.05, 16: 0.05, 17: 0.005, 20: 0.005, 21: 0.005, 22: 0.0005, 24: 0.0005}
    for epoch, lr in expected.items():
        assert learning_rate_at(settings, epoch) == pytest.approx(lr, rel=1e-12)
    half = OptimSettings(epochs=10, learning_rate=1.0, lr_decay_epochs=(2, 4, 6), lr_decay_rate=0.5)
    assert [learning_rate_at(half, e) for e in range(8)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.125, 0.125]


def test_optim_settings_reject_zero_epochs_and_non_positive_learning_rate() -> None:
    with pytest.raises(MelaError, match="epochs"):
        OptimSettings(epochs=0, learning_rate=0.1)
    with pytest.raises(MelaError, match="learning_rate"):
        OptimSettings(epochs=1, learning_rate=0.0)


def _model(seed: int) -> FeatureModel:
    torch.manual_seed(seed)
    return FeatureModel(ModelSpec("convnet4", {"in_channels": 1, "hidden": 8}))


class EpochRecorder:
    """A deterministic epoch: data seeded by the epoch, one SGD step on an MSE loss; records which epochs ran."""

    def __init__(self, trainer: Trainer, nan_at: int | None = None) -> None:
        self.trainer, self.nan_at, self.epochs = trainer, nan_at, []

    def __call__(self, epoch: int) -> dict[str, float]:
        self.epochs.append(epoch)
        generator = torch.Generator().manual_seed(1000 + epoch)
        images = torch.randn(6, 1, 16, 16, generator=generator)
        targets = torch.randn(6, 8, generator=generator)
        loss = F.mse_loss(self.trainer.trainable(images), targets)
        self.trainer.optimizer.zero_grad()
        loss.backward()
        self.trainer.optimizer.step()
        value = float("nan") if epoch == self.nan_at else loss.item()
        return {"loss": value, "lr_seen": self.trainer.optimizer.param_groups[0]["lr"]}


def _trainer(run_dir: Path, epochs: int, model_seed: int, validate=None, decay=(2,), log=None,
             report: ReportSettings | None = None) -> Trainer:
    model = _model(model_seed)
    settings = OptimSettings(epochs=epochs, learning_rate=0.05, lr_decay_epochs=decay, lr_decay_rate=0.1)
    return Trainer(run_dir, model, model, settings, validate, log=log or (lambda _line: None),
                   metadata={"step": "test"}, report=report)


def test_a_resumed_trainer_runs_only_the_missing_epochs_and_ends_with_the_uninterrupted_weights(tmp_path: Path) -> None:
    first = _trainer(tmp_path / "resumed", epochs=3, model_seed=0)
    first_epochs = EpochRecorder(first)
    first.fit(first_epochs)
    assert first_epochs.epochs == [0, 1, 2]
    assert (tmp_path / "resumed" / "last.pt").exists()

    # A fresh process: different initial weights, same run_dir, more epochs.
    second = _trainer(tmp_path / "resumed", epochs=5, model_seed=123)
    second_epochs = EpochRecorder(second)
    state = second.fit(second_epochs)
    assert second_epochs.epochs == [3, 4]
    assert state.epoch == 5
    assert [r["epoch"] for r in state.history] == [1, 2, 3, 4, 5]
    # lr 0.05 until epoch 2 (1-based), then 0.005.
    assert [r["lr"] for r in state.history] == pytest.approx([0.05, 0.05, 0.005, 0.005, 0.005])
    assert [r["lr_seen"] for r in state.history] == pytest.approx([0.05, 0.05, 0.005, 0.005, 0.005])

    straight = _trainer(tmp_path / "straight", epochs=5, model_seed=0)
    straight_epochs = EpochRecorder(straight)
    straight.fit(straight_epochs)
    assert straight_epochs.epochs == [0, 1, 2, 3, 4]
    resumed_weights, straight_weights = second.model.state_dict(), straight.model.state_dict()
    assert resumed_weights.keys() == straight_weights.keys()
    for name, value in straight_weights.items():
        torch.testing.assert_close(resumed_weights[name], value, rtol=0, atol=0, msg=name)

    history = json.loads((tmp_path / "resumed" / "history.json").read_text())
    assert [r["loss"] for r in history] == pytest.approx([r["loss"] for r in straight.state.history], rel=1e-6)
    final = torch.load(tmp_path / "resumed" / "final.pt", weights_only=False)
    assert final["epoch"] == 5 and final["step"] == "test" and final["spec"]["backbone"] == "convnet4"
    for name, value in straight_weights.items():
        torch.testing.assert_close(final["state_dict"][name], value, rtol=0, atol=0)


def test_a_finished_run_resumed_with_the_same_epochs_trains_nothing(tmp_path: Path) -> None:
    _trainer(tmp_path, epochs=2, model_seed=0).fit(lambda epoch: {"loss": 0.0})
    again = _trainer(tmp_path, epochs=2, model_seed=1)
    calls: list[int] = []
    state = again.fit(lambda e: calls.append(e) or {"loss": 0.0})
    assert calls == [] and state.epoch == 2


def test_best_checkpoints_are_written_when_validation_improves_from_the_first_decay_epoch(tmp_path: Path) -> None:
    scores = iter([{"1shot": 0.5, "5shot": 0.6}, {"1shot": 0.4, "5shot": 0.7}, {"1shot": 0.8, "5shot": 0.65}])
    calls: list[int] = []
    trainer = _trainer(tmp_path, epochs=4, model_seed=0, validate=lambda: calls.append(1) or next(scores), decay=(2,))
    recorder = EpochRecorder(trainer)
    state = trainer.fit(recorder)
    # Validation runs from the first decay epoch (2, 1-based): epochs 2, 3 and 4.
    assert len(calls) == 3
    assert "val_1shot" not in state.history[0]
    assert [r["val_1shot"] for r in state.history[1:]] == [0.5, 0.4, 0.8]
    assert state.best == {"1shot": 0.8, "5shot": 0.7}
    best_1 = torch.load(tmp_path / "best_1shot.pt", weights_only=False)
    best_5 = torch.load(tmp_path / "best_5shot.pt", weights_only=False)
    assert (best_1["epoch"], best_1["val_acc"]) == (4, 0.8)
    assert (best_5["epoch"], best_5["val_acc"]) == (3, 0.7)
    assert trainer.select("5shot") == tmp_path / "best_5shot.pt"
    assert trainer.select("10shot") == tmp_path / "final.pt"
    assert trainer.select(None) == tmp_path / "final.pt"


def test_a_nan_loss_stops_training_with_a_mela_error_naming_the_epoch(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, epochs=4, model_seed=0)
    recorder = EpochRecorder(trainer, nan_at=1)
    with pytest.raises(MelaError, match="diverged at epoch 2"):
        trainer.fit(recorder)
    assert recorder.epochs == [0, 1]
    assert not (tmp_path / "final.pt").exists()


def test_each_epoch_line_shows_its_duration_and_the_time_left_and_the_csv_holds_every_epoch_once(tmp_path):
    from mela.reporting.metrics import read_metrics
    from mela.reporting.progress import format_duration

    report = ReportSettings(tensorboard=False, plots=True)
    first_lines: list[str] = []
    def epoch(e: int) -> dict[str, float]:
        return {"loss": 1.0 / (e + 1)}

    _trainer(tmp_path, epochs=2, model_seed=0, log=first_lines.append, report=report).fit(epoch)
    lines: list[str] = []
    state = _trainer(tmp_path, epochs=4, model_seed=0, log=lines.append, report=report).fit(epoch)
    epoch_lines = [line for line in first_lines + lines if line.startswith("epoch ")]
    seconds = [r["seconds"] for r in state.history]
    assert all(s >= 0 for s in seconds)
    # The resumed process estimates the time left from its own epochs only (epoch 3 for epoch 4).
    assert epoch_lines == [
        f"epoch 1/2 {format_duration(seconds[0])} ({format_duration(seconds[0])} left) lr=0.05 loss=1",
        f"epoch 2/2 {format_duration(seconds[1])} lr=0.05 loss=0.5",
        f"epoch 3/4 {format_duration(seconds[2])} ({format_duration(seconds[2])} left) lr=0.005 loss=0.3333",
        f"epoch 4/4 {format_duration(seconds[3])} lr=0.005 loss=0.25",
    ]
    rows = read_metrics(tmp_path / "metrics.csv")
    assert rows == [{"step": "test", **record} for record in state.history]  # resumed: no epoch twice
    assert (tmp_path / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "tb").exists()


def test_without_report_settings_the_trainer_writes_no_metrics_and_no_plot(tmp_path: Path) -> None:
    _trainer(tmp_path, epochs=1, model_seed=0).fit(lambda e: {"loss": 1.0})
    assert (tmp_path / "final.pt").exists()
    assert not (tmp_path / "metrics.csv").exists() and not (tmp_path / "learning_curves.png").exists()


def test_report_settings_refuse_a_bad_tensorboard_value_before_anything_runs() -> None:
    with pytest.raises(MelaError, match="tensorboard must be auto, true or false, got 'sometimes'"):
        ReportSettings(tensorboard="sometimes")
