"""mela report: the tables match the runs' files, the HTML page is well formed and self-contained."""

from __future__ import annotations

import base64
import json
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

from mela.errors import MelaError
from mela.reporting.metrics import MetricsWriter
from mela.reporting.report import differing_settings, labeler_cell, main, wall_seconds, write_report

SAVES = Path("checkpoint") / "label_learn" / "saves"


def markdown_tables(text: str) -> list[list[dict[str, str]]]:
    """Every Markdown table as a list of {header: cell} rows."""
    tables, lines = [], text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("| ") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            header = [c.strip() for c in line.strip("|").split(" | ")]
            rows = []
            for row_line in lines[i + 2:]:
                if not row_line.startswith("|"):
                    break
                rows.append(dict(zip(header, [c.strip() for c in row_line.strip().strip("|").split(" | ")],
                                     strict=True)))
            tables.append(rows)
    return tables


class TableParser(HTMLParser):
    """Cells of every <table> in an HTML page, and every <img src>."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.images: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def expected_accuracy_rows(pipeline_dir: Path) -> list[dict[str, str]]:
    """The accuracy table computed independently from results.json."""
    results = json.loads((pipeline_dir / "results.json").read_text())
    by_model: dict[str, dict[str, str]] = {}
    for r in results["rows"]:
        row = by_model.setdefault(r["model"], {"pipeline": pipeline_dir.name, "data set": results["dataset"],
                                               "backbone": results["model"], "model": r["model"]})
        row[f"{r['shots']}-shot acc (95% CI)"] = f"{r['acc']:.2f} ± {r['ci']:.2f}"
    return list(by_model.values())


def test_the_report_table_matches_results_json_in_markdown_and_html(two_pipelines, tmp_path):
    md_path, html_path = write_report([two_pipelines], tmp_path / "out", with_plots=False)
    assert (md_path, html_path) == (tmp_path / "out" / "report.md", tmp_path / "out" / "report.html")
    tables = markdown_tables(md_path.read_text())
    accuracy = tables[0]
    pipelines = sorted((two_pipelines / SAVES / "pipeline").iterdir())
    assert accuracy == [row for p in pipelines for row in expected_accuracy_rows(p)]
    assert accuracy[4]["1-shot acc (95% CI)"] == "58.12 ± 2.91"  # 58.125 and 58.125 / 20, as the pipeline prints

    parser = TableParser()
    parser.feed(html_path.read_text())
    header, *rows = parser.tables[0]
    assert [dict(zip(header, row, strict=True)) for row in rows] == accuracy


def test_the_summary_shows_labeler_wall_times_and_only_the_settings_that_differ(two_pipelines, tmp_path):
    md_path, _ = write_report([two_pipelines], tmp_path, with_plots=False)
    summary = {row["pipeline"]: row for row in markdown_tables(md_path.read_text())[1]}
    assert summary["a"]["labeler"] == "11 clusters / 12 classes, acc 0.875, 90/100 tasks"
    # log.txt of learn_meta_repr spans 10 s, learn_labeler 11 s; the four evaluations 2 s each.
    assert summary["a"]["learn_meta_repr time"] == "10 s" and summary["a"]["learn_labeler time"] == "11 s"
    assert summary["a"]["meta_eval time"] == "8 s" and summary["a"]["total time"] == "1 min 02 s"
    assert summary["a"]["settings that differ"] == "learn_labeler.K=40"
    assert summary["b"]["settings that differ"] == "learn_labeler.K=80"
    runs = markdown_tables(md_path.read_text())[2]
    labeler_runs = [r for r in runs if r["step"] == "learn_labeler"]
    # pretrained_labeler names each run's own folder: not a difference; K is.
    assert [r["settings that differ"] for r in labeler_runs] == ["K=40", "K=80"]
    assert labeler_runs[0]["best val"] == "1-shot 48.75, 5-shot 68.50"
    assert labeler_runs[0]["status"] == "finished, 2 epochs"
    evals = {r["run"]: r for r in runs if r["step"] == "meta_eval"}
    assert evals["b_oracle"]["5-shot test (95% CI)"] == "85.00 ± 4.25"
    assert evals["b_oracle"]["settings that differ"] == "pretrained_model=sup_baseline/b"


def test_the_html_page_is_well_formed_and_references_no_external_resource(two_pipelines, tmp_path):
    md_path, html_path = write_report([two_pipelines / SAVES / "pipeline" / "a"], tmp_path)
    page = html_path.read_text()
    root = ET.fromstring(page.split("\n", 1)[1])  # well-formed XML after the doctype line
    assert root.tag == "html"
    assert not re.search(r"(?:src|href)\s*=\s*[\"'](?!data:)", page)
    assert "<link" not in page and "<script" not in page and "url(" not in page
    images = [img.get("src") for img in root.iter("img")]
    # One pipeline accuracy plot, four learning curves, one labeler-passes plot.
    assert len(images) == 6
    for src in images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    # The Markdown links the same plots as files next to it.
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md_path.read_text())
    assert len(links) == 6 and all((tmp_path / link).is_file() for link in links)


def test_a_run_folder_reports_an_unfinished_run_from_its_metrics_csv(tmp_path):
    run_dir = tmp_path / "learn_meta_repr" / "r1"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("dataset: glyphs\nmodel: convnet4\nepochs: 5\n")
    with MetricsWriter(run_dir, "learn_meta_repr", tensorboard=False, log=lambda _m: None) as writer:
        writer.log_epoch({"epoch": 1, "lr": 0.05, "loss": 1.0, "seconds": 3.0})
        writer.log_epoch({"epoch": 2, "lr": 0.05, "loss": 0.8, "val_1shot": 50.0, "seconds": 3.0})
    md_path, html_path = write_report([run_dir], run_dir)
    (row,) = markdown_tables(md_path.read_text())[0]
    assert (row["step"], row["run"], row["status"], row["model"]) == ("learn_meta_repr", "r1",
                                                                      "unfinished (2/5 epochs)", "convnet4")
    assert (run_dir / "report_plots" / "learn_meta_repr_r1_learning_curves.png").is_file()


def test_plots_a_step_already_wrote_are_embedded_rather_than_redrawn(two_pipelines, tmp_path):
    from mela.reporting import plots

    run_dir = two_pipelines / SAVES / "learn_labeler" / "a"
    plots.cluster_size_histogram([3, 4, 4], run_dir / "cluster_sizes.png")
    plots.learning_curves([{"epoch": 1, "loss": 2.0}], run_dir / "learning_curves.png")
    md_path, _ = write_report([run_dir], tmp_path)
    links = re.findall(r"!\[([^\]]*)\]\(([^)]+)\)", md_path.read_text())
    assert sorted(links) == [
        ("learn_labeler a: centroids per clustering pass", "report_plots/learn_labeler_a_labeler_passes.png"),
        ("learn_labeler a: cluster sizes", "ws/checkpoint/label_learn/saves/learn_labeler/a/cluster_sizes.png"),
        ("learn_labeler a: learning curves", "ws/checkpoint/label_learn/saves/learn_labeler/a/learning_curves.png"),
    ]
    assert not (tmp_path / "report_plots" / "learn_labeler_a_learning_curves.png").exists()


def test_wall_time_adds_up_the_sessions_of_a_resumed_run():
    lines = ["2026-01-02 10:00:00 mela.x | run folder /r on cpu", "2026-01-02 10:00:30 mela.x | epoch=1",
             "not a log line", "2026-01-02 11:00:00 mela.x | run folder /r on cpu (resumed)",
             "2026-01-02 11:00:45 mela.x | epoch=2"]
    assert wall_seconds(lines) == 75.0
    assert wall_seconds(lines, finished="2026-01-02T11:01:00") == 90.0
    assert wall_seconds([]) is None


def test_settings_differ_only_where_values_differ_beyond_the_run_names():
    configs = {"r": {"K": 40, "run_name": "r", "model": "/saves/r/r/model.pt", "sub": {"a": 1}, "tag": "r"},
               "s": {"K": 80, "run_name": "s", "model": "/saves/r/s/model.pt", "sub": {"a": 1}, "tag": "s",
                     "extra": True}}
    assert differing_settings(configs) == {"r": {"K": 40, "extra": "-"}, "s": {"K": 80, "extra": True}}
    configs["s"]["sub"] = {"a": 2}
    assert differing_settings(configs)["s"] == {"K": 80, "sub.a": 2, "extra": True}
    assert differing_settings({"only": {"K": 1}}) == {"only": {}}


def test_paths_that_hold_no_run_are_one_line_errors(tmp_path):
    with pytest.raises(MelaError, match="is not a folder"):
        write_report([tmp_path / "missing"], tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MelaError, match="holds no run"):
        write_report([tmp_path / "empty"], tmp_path)
    unfinished = tmp_path / "saves" / "pipeline" / "p"
    unfinished.mkdir(parents=True)
    (unfinished / "config.yaml").write_text("dataset: glyphs\n")
    with pytest.raises(MelaError, match="the pipeline did not finish; rerun it with run_name=p"):
        write_report([unfinished], tmp_path)


def test_main_writes_next_to_a_single_path_and_prints_both_files(two_pipelines, capsys):
    pipeline_dir = two_pipelines / SAVES / "pipeline" / "b"
    assert main([str(pipeline_dir), "--no-plots"]) == 0
    assert capsys.readouterr().out.split() == [str(pipeline_dir / "report.md"), str(pipeline_dir / "report.html")]
    assert markdown_tables((pipeline_dir / "report.md").read_text())[0] == expected_accuracy_rows(pipeline_dir)
    assert "![" not in (pipeline_dir / "report.md").read_text() and not (pipeline_dir / "report_plots").exists()


def test_a_labeler_warning_is_flagged_in_its_cell_and_a_clean_report_is_not() -> None:
    summary = {"clusters": 402, "true_classes": 355, "clustering_accuracy": 0.8, "ari": 0.65, "tasks_kept": 568,
               "tasks_total": 568}
    assert labeler_cell(summary) == "402 clusters / 355 classes, acc 0.800, ARI 0.650, 568/568 tasks"
    warned = labeler_cell({**summary, "warning": "the number of clusters follows K (301 with K=300, 402 with K=400)"})
    assert warned == "402 clusters / 355 classes, acc 0.800, ARI 0.650, 568/568 tasks, WARNING in labeler_report.json"
    assert labeler_cell({"clusters": 9, "tasks_kept": 3, "tasks_total": 3, "warning": "x"}).endswith(
        "(no true labels), 3/3 tasks, WARNING in labeler_report.json")
