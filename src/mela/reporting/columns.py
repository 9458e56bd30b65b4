"""Which column of an accuracy table a result row belongs to.

Rows of ``results.json`` are ``{model, shots, acc, ci, ...}``; a row may name its own ``column`` (the
held-out tasks of a task collection, or the k-shot tasks of an ``eval_dataset``). Tables and plots order
columns as: held-out tasks, the k-shot columns of the main data set by k, then the others as they come.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def row_column(row: Mapping) -> str:
    """``row['column']`` if set, else ``"<shots>-shot"``."""
    column = row.get("column")
    return str(column) if column else f"{int(row['shots'])}-shot"


def columns_of(rows: Iterable[Mapping]) -> list[str]:
    """The distinct columns of ``rows`` in table order."""
    rows = list(rows)
    named = list(dict.fromkeys(row_column(r) for r in rows if r.get("column")))
    plain = sorted({int(r["shots"]) for r in rows if not r.get("column")})
    held = [c for c in named if c.startswith("held-out")]
    return held + [f"{k}-shot" for k in plain] + [c for c in named if c not in held]
