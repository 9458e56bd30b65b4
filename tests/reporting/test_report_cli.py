"""`mela report` through the mela command."""

from __future__ import annotations

from mela.cli import main


def test_mela_report_writes_both_files_where_asked(two_pipelines, tmp_path, capsys):
    assert main(["report", str(two_pipelines), "--out", str(tmp_path / "out"), "--no-plots"]) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / "out" / "report.md"), str(tmp_path / "out" /
                                                                                         "report.html")]
    assert "| b | glyphs | convnet4 | oracle | 70.00 ± 3.50 | 85.00 ± 4.25 |" in (tmp_path / "out" /
                                                                                "report.md").read_text()


def test_mela_report_on_a_folder_without_runs_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "holds no run" in err and "\n" not in err
