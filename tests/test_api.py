"""The public API: the README's example runs as written, and each function agrees with the library beneath it."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import mela
from mela.data.samplers import TaskShape
from mela.errors import MelaError
from mela.methods.evaluator import EvalProtocol, evaluate_model
from mela.methods.labeler import LabelerConfig

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_python_example() -> str:
    """The first ```python block of the README's "From Python" section."""
    text = README.read_text()
    section = text[text.index("## From Python"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_the_readme_python_example_runs_and_prints_clusters_and_accuracies(workspace, capsys):
    exec(compile(readme_python_example(), "README.md", "exec"), {})  # noqa: S102 - our own README
    out = capsys.readouterr().out.splitlines()
    assert re.match(r"\d+ clusters for \d+ classes, clustering accuracy 0\.\d\d", out[0])
    scores = [line for line in out if re.match(r"(meta_repr|mela) [15]-shot: \d+\.\d\d ± \d+\.\d\d %", line)]
    assert len(scores) == 4
    assert all(float(line.split(": ")[1].split(" ")[0]) > 40.0 for line in scores)  # far above 5-way chance


def test_the_public_names_are_exported_lazily_and_importing_mela_does_not_load_torch():
    import subprocess
    import sys

    code = "import sys, mela; print('torch' in sys.modules, mela.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "False" and out[1] == mela.__version__
    for name in mela.__all__:
        assert getattr(mela, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = mela.nope


def test_evaluate_gives_the_evaluators_numbers_for_every_shot_count(synthetic_dataset, workspace):
    data = mela.open_dataset(synthetic_dataset)
    model = mela.create_model("convnet4", in_channels=1)
    results = mela.evaluate(model, data, "test", shots=(1, 3), n_ways=4, n_queries=3, n_tasks=30, device="cpu")
    direct = evaluate_model(model, data.split("test"), [TaskShape(4, 1, 3), TaskShape(4, 3, 3)], 30, EvalProtocol(),
                            data.mean, data.std, torch.device("cpu"))
    assert [r.shots for r in results] == [1, 3]
    assert [r.acc for r in results] == pytest.approx([d.overall.acc for d in direct])
    assert [r.ci for r in results] == pytest.approx([d.overall.ci for d in direct])
    assert all(r.n_tasks == 30 for r in results)


def test_infer_global_labels_from_a_model_equals_labelling_its_features(synthetic_dataset, workspace):
    data = mela.open_dataset(synthetic_dataset)
    model = mela.create_model("convnet4", in_channels=1)
    tasks = mela.label_pile(data, n_ways=4, images_per_class=3)
    features = mela.task_features(model, data, tasks, device="cpu")
    assert features.shape == (*tasks.shape, model.feat_dim)
    config = LabelerConfig(K=40)
    from_model = mela.infer_global_labels(model, tasks, data, labeler=config, device="cpu")
    from_features = mela.infer_global_labels(features, labeler=config)
    np.testing.assert_array_equal(from_model.assigned, from_features.assigned)
    np.testing.assert_allclose(from_model.centroids, from_features.centroids)
    items, labels = from_model.labelled_items(tasks)
    assert len(items) == tasks.size and labels.max() + 1 == from_model.n_clusters


def test_meta_train_writes_nothing_unless_given_a_run_dir_and_returns_the_selected_weights(
        synthetic_dataset, workspace, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = mela.open_dataset(synthetic_dataset)
    kwargs = dict(n_ways=4, n_shots=2, n_queries=2, epochs=1, train_db_size=8, no_replacement=False,
                  val_shots=(1, 2), val_tasks=10, device="cpu", log=None)
    result = mela.meta_train(mela.create_model("convnet4", in_channels=1), data, **kwargs)
    assert result.checkpoint is None and list(tmp_path.iterdir()) == []
    assert set(result.best_val) == {"1shot", "2shot"} and len(result.history) == 1
    kept = mela.meta_train(mela.create_model("convnet4", in_channels=1), data, run_dir=tmp_path / "run", **kwargs)
    assert kept.checkpoint == tmp_path / "run" / "best_2shot.pt"
    saved = mela.load_model(kept.checkpoint, device="cpu")
    for a, b in zip(saved.state_dict().values(), kept.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_pretrain_without_labels_is_the_oracle_on_the_true_classes(synthetic_dataset, workspace):
    data = mela.open_dataset(synthetic_dataset)
    result = mela.pretrain(mela.create_model("convnet4", in_channels=1), data, epochs=1, batch_size=64,
                           val_shots=(1,), val_tasks=10, device="cpu", log=None)
    assert set(result.best_val) == {"1shot"}
    assert result.history[0]["train_acc"] > 100 / 24  # better than chance over the 24 true classes


def test_bad_api_inputs_are_one_line_errors(synthetic_dataset, workspace):
    model = mela.create_model("convnet4", in_channels=1)
    with pytest.raises(MelaError, match="needs the tasks and the dataset"):
        mela.infer_global_labels(model)
    with pytest.raises(MelaError, match=r"features must be \(tasks, n_ways"):
        mela.infer_global_labels(np.zeros((3, 4, 5)))
    with pytest.raises(MelaError, match="needs the tasks they were inferred from"):
        mela.pretrain(model, synthetic_dataset, labels=mela.infer_global_labels(np.random.rand(6, 4, 2, 8)))
    with pytest.raises(MelaError, match="unknown data set 'nope'"):
        mela.load_dataset("nope")
    with pytest.raises(MelaError, match="valid names"):
        mela.create_model("resnet13")


@pytest.mark.slow
def test_tasks_from_python_pairs_train_label_pretrain_and_evaluate_inside_held_out_tasks(workspace):
    from tests.conftest import make_synthetic_split

    split = make_synthetic_split(12, 10, 8)
    rng = np.random.default_rng(0)
    pairs = []
    for _ in range(40):  # 40 jobs of 2-4 classes, 1-3 images each, named "a", "b", ... in every job
        classes = rng.choice(12, size=int(rng.integers(2, 5)), replace=False)
        images, local, true = [], [], []
        for name, c in zip("abcd", classes, strict=False):
            rows = rng.choice(np.flatnonzero(split.labels == c), size=int(rng.integers(1, 4)), replace=False)
            images += list(split.images[rows])
            local += [name] * len(rows)
            true += [int(c)] * len(rows)
        pairs.append((np.stack(images), local, true))
    tasks = mela.open_tasks(pairs, holdout=0.2, val=0.1)
    assert isinstance(tasks, mela.TaskDataset) and tasks.has_truth
    model = mela.create_model("convnet4", in_channels=1)
    trained = mela.meta_train(model, tasks, epochs=1, val_shots=(1,), val_tasks=10, log=None)
    labels = mela.infer_global_labels(trained.model, dataset=tasks, labeler=LabelerConfig(K=24))
    train = tasks.tasks("train")
    assert labels.assigned.shape == (train.n_classes,)
    report = labels.report(train.class_truth)
    assert report["true_classes"] == len(np.unique(train.class_truth))
    pretrained = mela.pretrain(mela.create_model("convnet4", in_channels=1), tasks, labels, epochs=1,
                               val_shots=(1,), val_tasks=10, log=None)
    result = mela.evaluate_tasks(pretrained.model, tasks)
    assert isinstance(result, mela.TasksResult) and result.n_tasks + result.unscored_tasks == 8
    assert 0.0 <= result.acc <= 100.0
    # The same evaluation by hand: the evaluator's own per-task loop on the model's features.
    from mela.methods.evaluator import evaluate_collection

    again = evaluate_collection(pretrained.model, tasks.tasks("test"), [None], EvalProtocol(), tasks.mean, tasks.std,
                                torch.device("cpu"))[0]
    assert again.accuracy.acc == pytest.approx(result.acc)
