"""The columns of an accuracy table: the two held-out views first, then the k-shot columns, then the others."""

from __future__ import annotations

from mela.reporting.columns import HELD_OUT_1SHOT_COLUMN, HELD_OUT_COLUMN, columns_of, row_column


def test_the_two_held_out_columns_come_first_half_view_then_one_shot_whatever_order_the_rows_come_in() -> None:
    rows = [{"shots": 5, "column": "glyphs 5-shot"}, {"shots": 1, "column": HELD_OUT_1SHOT_COLUMN},
            {"shots": 5}, {"shots": 1}, {"shots": None, "column": HELD_OUT_COLUMN},
            {"shots": None, "column": "held-out tasks (other)"}]
    assert columns_of(rows) == ["held-out tasks", "held-out tasks 1-shot", "held-out tasks (other)", "1-shot",
                                "5-shot", "glyphs 5-shot"]
    assert row_column({"shots": 1, "column": HELD_OUT_1SHOT_COLUMN}) == "held-out tasks 1-shot"
    assert row_column({"shots": 1}) == "1-shot"
