"""mela predict: folders and manifests of new tasks give meta_eval's predictions; bad input is one line."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

import mela
from mela.cli import main
from mela.data.samplers import TaskShape, evaluation_tasks, split_support_query
from mela.errors import MelaError
from mela.inference import predict as predicting
from mela.inference.model_io import load_trained_model
from mela.inference.predict import predict_tasks, task_from_folders, tasks_from_manifest
from mela.methods.evaluator import EvalProtocol, extract_features, task_accuracies

from .conftest import write_png

SHAPE = TaskShape(4, 2, 3)


@pytest.fixture(scope="module")
def held_out(synthetic_dataset, trained_model_file, tmp_path_factory):
    """Six held-out 4-way 2-shot tasks written as folders and as one manifest, with meta_eval's predictions."""
    split = mela.open_dataset(synthetic_dataset).split("test")
    tasks = evaluation_tasks(split, SHAPE, 6)[0][1]
    root = tmp_path_factory.mktemp("held_out")
    support, support_labels, query, query_labels = split_support_query(tasks, SHAPE.n_shots)
    images = split.item_images()
    manifest = [("task", "role", "path", "label")]
    for t in range(len(tasks)):
        for item, label in zip(support[t], support_labels[t], strict=True):
            path = write_png(root / f"t{t}" / "support" / f"c{label}" / f"{item}.png", split.images[images[item]])
            manifest.append((f"t{t}", "support", str(path.relative_to(root)), f"c{label}"))
        for item, label in zip(query[t], query_labels[t], strict=True):
            path = write_png(root / f"t{t}" / "query" / f"{item}.png", split.images[images[item]])
            manifest.append((f"t{t}", "query", str(path.relative_to(root)), f"c{label}"))
    with open(root / "manifest.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(manifest)
    # meta_eval's path: features of the split once, L2-normalised in float64, its logistic head per task.
    model = mela.load_model(trained_model_file, "cpu")
    features = extract_features(model, split.images, (0.35,), (0.4,), torch.device("cpu"))[images].double()
    features = torch.nn.functional.normalize(features, dim=-1)
    head = EvalProtocol().head_factory()
    expected, truth = {}, {}
    for t in range(len(tasks)):
        truth[t] = {f"{item}.png": int(label) for item, label in zip(query[t], query_labels[t], strict=True)}
        fitted = head().fit(features[support[t]][None], torch.from_numpy(support_labels[t].copy())[None], 4)
        expected[t] = {f"{item}.png": int(p) for item, p in zip(query[t], fitted.predict(features[query[t]][None])[0],
                                                                   strict=True)}
    accuracy = task_accuracies(features, tasks, SHAPE.n_shots, head).mean() * 100
    return root, expected, accuracy, truth


def test_predictions_on_task_folders_are_meta_evals_and_so_is_the_accuracy(trained_model_file, held_out):
    root, expected, accuracy, truth = held_out
    trained = load_trained_model(trained_model_file, "cpu")
    correct = []
    for t, labels in expected.items():
        task = task_from_folders(root / f"t{t}" / "support", [root / f"t{t}" / "query"])
        run = predict_tasks(trained, [task])
        got = {p.path.name: int(p.predicted[1:]) for p in run.predictions}
        assert got == labels
        correct += [int(p.predicted[1:]) == truth[t][p.path.name] for p in run.predictions]
    assert np.mean(correct) * 100 == pytest.approx(accuracy)


def test_one_manifest_predicts_every_task_embedding_each_image_once(trained_model_file, held_out, monkeypatch):
    root, expected, accuracy, _ = held_out
    decoded = []
    original = predicting.decode
    monkeypatch.setattr(predicting, "decode", lambda trained, files, *a: decoded.append(len(files)) or
                        original(trained, files, *a))
    tasks = tasks_from_manifest(root / "manifest.csv")
    tasks.append(tasks_from_manifest(root / "manifest.csv")[0])  # the same images again, in another task
    tasks[-1].name = "again"
    run = predict_tasks(load_trained_model(trained_model_file, "cpu"), tasks)
    assert decoded == [6 * (8 + 12)]  # each distinct file once
    for p in run.predictions:
        t = 0 if p.task == "again" else int(p.task[1:])
        assert int(p.predicted[1:]) == expected[t][p.path.name]
    assert run.accuracy()[0] == pytest.approx(accuracy * 6 / 7 + accuracy_of_task(run, "again") / 7)


def accuracy_of_task(run, name):
    return 100 * np.mean([p.predicted == p.label for p in run.predictions if p.task == name])


def test_the_cli_writes_one_predictions_file_with_top_k_and_scores_labelled_queries(trained_model_file, held_out,
                                                                                    tmp_path, capsys):
    root, expected, accuracy, _ = held_out
    out = tmp_path / "predictions.csv"
    assert main(["predict", str(trained_model_file), "--tasks", str(root / "manifest.csv"), "--out", str(out),
                 "--top-k", "2"]) == 0
    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert len(rows) == 6 * 12
    assert list(rows[0]) == ["task", "path", "predicted", "probability", "top1", "top1_probability", "top2",
                             "top2_probability", "label", "correct"]
    for row in rows:
        assert row["top1"] == row["predicted"] and float(row["probability"]) >= float(row["top2_probability"])
    assert f"accuracy on the 72 labelled queries: {accuracy:.2f} %" in capsys.readouterr().out


def test_the_cli_prints_predictions_for_a_support_folder_and_query_files(trained_model_file, held_out, capsys):
    root, expected, _, _ = held_out
    queries = sorted((root / "t0" / "query").iterdir())[:2]
    assert main(["predict", str(trained_model_file), "--support", str(root / "t0" / "support"), "--query",
                 *map(str, queries), "--head", "prototype"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("task,path,predicted,probability,top1") and len(lines) == 3


def _task(tmp_path, classes=("a", "b"), per_class=2):
    rng = np.random.default_rng(0)
    for name in classes:
        for i in range(per_class):
            write_png(tmp_path / "support" / name / f"{i}.png", rng.integers(0, 256, (16, 16, 1), dtype=np.uint8))
    write_png(tmp_path / "query" / "q.png", rng.integers(0, 256, (16, 16, 1), dtype=np.uint8))
    return tmp_path / "support", tmp_path / "query"


def _one_line_error(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_bad_support_folders_are_refused_in_one_line(trained_model_file, tmp_path, capsys):
    support, query = _task(tmp_path)
    (support / "empty").mkdir()
    (support / "empty" / "notes.txt").write_text("no image here")
    assert "support class folder" in _one_line_error(capsys, ["predict", str(trained_model_file), "--support",
                                                               str(support), "--query", str(query)])
    (support / "empty" / "notes.txt").unlink()
    (support / "empty" / "broken.png").write_bytes(b"not a png")
    assert "broken.png" in _one_line_error(capsys, ["predict", str(trained_model_file), "--support", str(support),
                                                    "--query", str(query)])
    (support / "empty" / "broken.png").unlink()
    (support / "empty").rmdir()
    (support / "b" / "0.png").unlink()
    (support / "b" / "1.png").unlink()
    (support / "b").rmdir()
    assert "at least two" in _one_line_error(capsys, ["predict", str(trained_model_file), "--support", str(support),
                                                      "--query", str(query)])


def test_an_unreadable_query_is_refused_or_skipped_and_counted(trained_model_file, tmp_path, capsys):
    support, query = _task(tmp_path)
    good = (query / "q.png").read_bytes()
    (query / "truncated.png").write_bytes(good[: len(good) // 3])
    message = _one_line_error(capsys, ["predict", str(trained_model_file), "--support", str(support), "--query",
                                       str(query)])
    assert "truncated.png" in message
    out = tmp_path / "p.csv"
    assert main(["predict", str(trained_model_file), "--support", str(support), "--query", str(query), "--out",
                 str(out), "--skip-bad"]) == 0
    captured = capsys.readouterr()
    assert "skipped 1 unreadable image(s)" in captured.out and "truncated.png" in captured.err
    assert [row["path"].endswith("q.png") for row in csv.DictReader(out.read_text().splitlines())] == [True]


def test_bad_manifests_models_and_heads_are_refused_in_one_line(trained_model_file, tmp_path, capsys):
    support, query = _task(tmp_path)
    manifest = tmp_path / "m.csv"
    manifest.write_text("task,role,path,label\nt1,support,support/a/0.png,a\nt1,helper,query/q.png,\n")
    assert "unknown role 'helper'" in _one_line_error(capsys, ["predict", str(trained_model_file), "--tasks",
                                                               str(manifest)])
    manifest.write_text("task,role,path,label\nt1,query,query/q.png,\n")
    assert "task 't1' has no support rows" in _one_line_error(capsys, ["predict", str(trained_model_file),
                                                                       "--tasks", str(manifest)])
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    assert "not a mela model file" in _one_line_error(capsys, ["predict", str(other), "--support", str(support),
                                                               "--query", str(query)])
    assert main(["predict", str(trained_model_file), "--support", str(support), "--query", str(query), "--head",
                 "svm"]) == 2
    assert "invalid choice: 'svm'" in capsys.readouterr().err
    with pytest.raises(MelaError, match="either --support"):
        main_args = ["predict", str(trained_model_file)]
        from mela.inference_cli import main as inference_main

        inference_main(main_args[0], main_args[1:])
