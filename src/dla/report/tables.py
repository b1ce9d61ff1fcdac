"""Markdown tables of runs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dla.kind import IMAGE_CLASSIFIER, registered


def format_cell(value: Any, kind: str, missing: str = "-") -> str:
    """A cell's text: pct (a fraction shown as %), float, sci, int, time (s), str; None (or "") is `missing`."""
    if value is None or value == "":
        return missing
    try:
        if isinstance(value, str):
            pass  # text as it is (a damaged summary's "high" would repeat 100 times as a percentage)
        elif kind == "pct":
            return f"{100 * value:.2f}"
        elif kind == "float":
            return f"{value:.4f}"
        elif kind == "sci":
            return f"{value:.3g}"
        elif kind == "int":
            return f"{int(value):,}"
        elif kind == "time":
            return f"{value:.1f}"
    except (TypeError, ValueError):
        pass
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def run_columns(rows: Sequence[dict[str, Any]]) -> tuple[tuple[str, str, str], ...]:
    """The table columns of the rows' run kind (summary.json's `kind`); for a mix of kinds, every kind's
    columns once (by summary key), the time last."""
    known = registered()
    kinds = list(dict.fromkeys(r.get("kind") if r.get("kind") in known else IMAGE_CLASSIFIER for r in rows)) or [IMAGE_CLASSIFIER]
    columns: dict[str, tuple[str, str, str]] = {}
    for kind in kinds:
        for column in known[kind].table_columns:
            columns.setdefault(column[1], column)
    timed = [c for c in columns.values() if c[2] == "time"]
    return tuple(c for c in columns.values() if c[2] != "time") + tuple(timed[:1])


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]] | None = None) -> str:
    """Rows of dicts as a Markdown table; `columns` is (header, key, format) with format str/int/float/sci/pct/time."""
    columns = run_columns(rows) if columns is None else columns
    head = "| " + " | ".join(h for h, _, _ in columns) + " |"
    rule = "|" + "|".join("---" if k == "str" else "---:" for _, _, k in columns) + "|"
    body = ["| " + " | ".join(format_cell(r.get(key), kind) for _, key, kind in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body]) + "\n"


def confusion_text(confusion: Any, classes: tuple[str, ...]) -> str:
    """A confusion matrix (rows: true class) as aligned text, for the terminal."""
    width = max(8, *(len(c) for c in classes))
    head = " " * width + " " + " ".join(f"{c[:8]:>8}" for c in classes)
    rows = [f"{c:>{width}} " + " ".join(f"{int(n):8d}" for n in row) for c, row in zip(classes, confusion)]
    return "\n".join(["rows: true class, columns: predicted", head, *rows])
