"""Markdown tables of runs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dla.config import LANGUAGE_MODEL


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


RUN_COLUMNS = (
    ("run", "name", "str"),
    ("data", "data", "str"),
    ("params", "params", "int"),
    ("best epoch", "best_epoch", "str"),
    ("test acc (%)", "test_acc", "pct"),
    ("test loss", "test_loss", "float"),
    ("time (s)", "train_time_s", "time"),
)


LM_RUN_COLUMNS = (
    ("run", "name", "str"),
    ("data", "data", "str"),
    ("params", "params", "int"),
    ("best step", "best_step", "str"),
    ("best val loss", "best_val_loss", "float"),
    ("test loss (nats/token)", "test_loss", "float"),
    ("test bits/char", "test_bpc", "float"),
    ("time (s)", "train_time_s", "time"),
)


def run_columns(rows: Sequence[dict[str, Any]]) -> tuple[tuple[str, str, str], ...]:
    """Classifier columns, language-model columns, or both when a report mixes them."""
    lm = [r.get("kind") == LANGUAGE_MODEL for r in rows]  # summary.json's kind is config.run_kind
    if all(lm) and rows:
        return LM_RUN_COLUMNS
    if any(lm):
        return RUN_COLUMNS[:-1] + LM_RUN_COLUMNS[5:]
    return RUN_COLUMNS


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]] = RUN_COLUMNS) -> str:
    """Rows of dicts as a Markdown table; `columns` is (header, key, format) with format str/int/float/sci/pct/time."""
    head = "| " + " | ".join(h for h, _, _ in columns) + " |"
    rule = "|" + "|".join("---" if k == "str" else "---:" for _, _, k in columns) + "|"
    body = ["| " + " | ".join(format_cell(r.get(key), kind) for _, key, kind in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body]) + "\n"
