"""Corrected labels: learn_labeler trains on an edited ``global_labels.csv`` (``global_labels=FILE``) instead of
clustering; the gallery and ``mela labels`` read the run folder."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from mela.cli import main
from mela.engine.checkpoint import load_checkpoint
from mela.errors import MelaError
from mela.steps import learn_labeler, learn_meta_repr
from mela.workspace import saves_dir
from tests.steps.test_step_round_trips import run_step, tiny_config
from tests.steps.test_task_collection_steps import pipeline_args

LABELER = ("epochs=1", "pretrained_labeler=base", "K=40", "sup_rotate_aug=false", "batch_size=32")


@pytest.fixture()
def labelled(synthetic_dataset, workspace) -> Path:
    """A learn_meta_repr run ``base`` and a learn_labeler run ``a`` that inferred the labels."""
    run_step(learn_meta_repr, tiny_config("learn_meta_repr", synthetic_dataset, "epochs=1", "run_name=base"))
    run_step(learn_labeler, tiny_config("learn_labeler", synthetic_dataset, *LABELER, "run_name=a"))
    return saves_dir(workspace) / "learn_labeler" / "a"


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def write_rows(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_an_unedited_labels_file_trains_bit_identically_and_an_edited_one_trains_its_labels(
        labelled, synthetic_dataset, workspace) -> None:
    inferred = read_rows(labelled / "global_labels.csv")
    report_a = json.loads((labelled / "labeler_report.json").read_text())
    run_step(learn_labeler, tiny_config("learn_labeler", synthetic_dataset, *LABELER, "run_name=b",
                                        f"global_labels={labelled / 'global_labels.csv'}"))
    b = saves_dir(workspace) / "learn_labeler" / "b"
    report_b = json.loads((b / "labeler_report.json").read_text())
    assert report_b["labels_from"]["changed"] == 0 and report_b["labels_from"]["absent"] == 0
    assert report_b["clusters"] == report_a["clusters"] and report_b["mode"] == "file"
    assert [r["global_class"] for r in read_rows(b / "global_labels.csv")] == [r["global_class"] for r in inferred]
    # Same labels, same numbering, same seed: the trained model is the same to the bit.
    first, second = load_checkpoint(labelled / "model.pt"), load_checkpoint(b / "model.pt")
    state_a, state_b = first["state_dict"], second["state_dict"]
    assert state_a.keys() == state_b.keys() and all(torch.equal(state_a[k], state_b[k]) for k in state_a)

    # Merge the second class into the first, leave one task class out, drop one row: trained as given.
    names = list(dict.fromkeys(r["global_class"] for r in inferred))
    edited = [dict(r, global_class=names[0]) if r["global_class"] == names[1] else dict(r) for r in inferred]
    clash = [r["task"] for r in edited if r["global_class"] == names[0]]
    moved = sum(r["global_class"] == names[1] for r in inferred)
    edited[-1]["global_class"] = ""
    del edited[-2]
    path = write_rows(workspace / "edited.csv", edited)
    extra = ["global_labels_allow_shared=true"] if len(clash) > len(set(clash)) else []
    run_step(learn_labeler, tiny_config("learn_labeler", synthetic_dataset, *LABELER, "run_name=c",
                                        f"global_labels={path}", *extra))
    c = saves_dir(workspace) / "learn_labeler" / "c"
    report_c = json.loads((c / "labeler_report.json").read_text())
    gone_last = inferred[-1]["global_class"] not in {r["global_class"] for r in edited}
    gone_second_last = inferred[-2]["global_class"] not in {r["global_class"] for r in edited}
    assert report_c["clusters"] == report_a["clusters"] - 1 - gone_last - gone_second_last
    assert report_c["labels_from"]["absent"] == 1 and report_c["labels_from"]["left_out"] == 2
    assert report_c["labels_from"]["changed"] == moved + 1  # the merged rows and the emptied one
    assert report_c["labels_from"]["sha256"] and report_c["labels_from"]["rows"] == len(edited)
    done = json.loads((c / "done.json").read_text())
    assert done["n_classes"] == [report_c["clusters"]]


def test_mela_labels_shows_a_class_and_writes_the_doubtful_ones(labelled, tmp_path, capsys) -> None:
    gallery = json.loads((labelled / "gallery.json").read_text())
    top = gallery["classes"][0]
    assert main(["labels", "show", str(labelled), "--class", top["name"]]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{top['name']}: {top['size']} member(s), doubt {top['doubt']:.2f} (rank 1)")
    assert all(f"  {task}\t{local}\t" in out for task, local, _ in top["members"])
    task = top["members"][0][0]
    assert main(["labels", "show", str(labelled), "--task", task]) == 0
    assert f"task {task} local class" in capsys.readouterr().out
    review = tmp_path / "review.csv"
    assert main(["labels", "doubtful", str(labelled), "--top", "3", "--out", str(review)]) == 0
    rows = read_rows(review)
    assert [r["global_class"] for r in rows][: top["size"]] == [top["name"]] * top["size"]
    assert {r["rank"] for r in rows} == {"1", "2", "3"}
    assert main(["labels", "show", str(labelled), "--class", "nope"]) == 2
    assert "no global class 'nope'" in capsys.readouterr().err


def test_the_gallery_is_in_the_run_folder_and_in_the_report(labelled, tmp_path) -> None:
    assert (labelled / "gallery.html").is_file() and (labelled / "gallery_thumbs.npz").is_file()
    assert main(["report", str(labelled), "--out", str(tmp_path / "rep")]) == 0
    page = (tmp_path / "rep" / "report.html").read_text()
    assert "Most doubtful classes" in page and 'class="strip"' in page
    assert list((tmp_path / "rep" / "report_gallery").glob("*.html"))


@pytest.mark.parametrize("edit, message", [
    (lambda rows: rows + [dict(rows[0], task="999999")], "unknown task '999999'"),
    (lambda rows: rows[:1] + [dict(rows[1], local_label="zz")] + rows[2:], "has no local class 'zz'"),
    (lambda rows: [{k: v for k, v in r.items() if k != "global_class"} for r in rows], "no global_class column"),
    (lambda rows: [dict(r, collection="0123456789abcdef") for r in rows], "for another task collection"),
])
def test_a_bad_labels_file_is_refused_with_one_line(labelled, synthetic_dataset, workspace, edit, message) -> None:
    path = write_rows(workspace / "bad.csv", edit(read_rows(labelled / "global_labels.csv")))
    with pytest.raises(MelaError, match=message):
        run_step(learn_labeler, tiny_config("learn_labeler", synthetic_dataset, *LABELER, "run_name=bad",
                                            f"global_labels={path}"))


def test_two_classes_of_one_task_in_one_global_class_are_refused_unless_allowed(labelled, synthetic_dataset,
                                                                                 workspace) -> None:
    rows = read_rows(labelled / "global_labels.csv")
    rows[1]["global_class"] = rows[0]["global_class"]  # rows 0 and 1 are two classes of task 0
    path = write_rows(workspace / "shared.csv", rows)
    with pytest.raises(MelaError, match="task '0' gives two of its local classes the global class"):
        run_step(learn_labeler, tiny_config("learn_labeler", synthetic_dataset, *LABELER, "run_name=s",
                                            f"global_labels={path}"))
    run_step(learn_labeler, tiny_config("learn_labeler", synthetic_dataset, *LABELER, "run_name=s2",
                                        f"global_labels={path}", "global_labels_allow_shared=true"))


def test_the_pipeline_passes_global_labels_to_learn_labeler(workspace) -> None:
    from mela.config import compose_config
    from mela.steps import pipeline

    cfg = compose_config("pipeline", ["learn_labeler.global_labels=/data/edited.csv", "run_name=p",
                                      "learn_labeler.gallery_top=7"])
    labels = pipeline.read_settings(cfg).steps["learn_labeler"].labels
    assert (labels.global_labels, labels.allow_shared, labels.gallery_top) == ("/data/edited.csv", False, 7)


@pytest.mark.slow
def test_on_a_task_collection_the_pipeline_trains_an_unedited_file_bit_identically(collection_dir, workspace,
                                                                                    capsys) -> None:
    assert main(pipeline_args(collection_dir, "tk")) == 0
    first = saves_dir(workspace) / "learn_labeler" / "tk"
    rows = read_rows(first / "global_labels.csv")
    assert rows and {r["collection"] for r in rows} == {rows[0]["collection"]}
    assert main(pipeline_args(collection_dir, "tk2", f"learn_labeler.global_labels={first / 'global_labels.csv'}")) == 0
    second = saves_dir(workspace) / "learn_labeler" / "tk2"
    report = json.loads((second / "labeler_report.json").read_text())
    assert report["labels_from"]["changed"] == 0 and report["mode"] == "file"
    a, b = load_checkpoint(first / "model.pt")["state_dict"], load_checkpoint(second / "model.pt")["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((second / "gallery.json").read_text())["source"] == "file"  # the corrected classes' gallery
    capsys.readouterr()
