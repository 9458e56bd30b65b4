"""Which column of an accuracy table a result row belongs to.

Rows of ``results.json`` are ``{model, shots, acc, ci, ...}``; a row may name its own ``column`` (the
held-out tasks of a task collection, or the k-shot tasks of an ``eval_dataset``). Tables and plots order
columns as: the held-out columns (half of each class as support, then one support image per class, then any
other ``held-out ...``), the k-shot columns of the main data set by k, then the others as they come.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

# meta_eval's two views of the held-out tasks of a collection, each task evaluated inside itself: half of each
# class's images as support (at least one), and one support image per class; the rest of each class are queries.
HELD_OUT_COLUMN = "held-out tasks"
HELD_OUT_1SHOT_COLUMN = "held-out tasks 1-shot"
HELD_OUT_COLUMNS = (HELD_OUT_COLUMN, HELD_OUT_1SHOT_COLUMN)


def row_column(row: Mapping) -> str:
    """``row['column']`` if set, else ``"<shots>-shot"``."""
    column = row.get("column")
    return str(column) if column else f"{int(row['shots'])}-shot"


def columns_of(rows: Iterable[Mapping]) -> list[str]:
    """The distinct columns of ``rows`` in table order."""
    rows = list(rows)
    named = list(dict.fromkeys(row_column(r) for r in rows if r.get("column")))
    plain = sorted({int(r["shots"]) for r in rows if not r.get("column")})
    held = sorted((c for c in named if c.startswith("held-out")),
                  key=lambda c: HELD_OUT_COLUMNS.index(c) if c in HELD_OUT_COLUMNS else len(HELD_OUT_COLUMNS))
    return held + [f"{k}-shot" for k in plain] + [c for c in named if c not in held]
