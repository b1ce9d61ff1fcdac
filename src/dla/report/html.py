"""Small HTML pieces for the report site: escaping, tables, Markdown tables, the page frame, CSS and JS."""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from typing import Any

from dla.report.tables import format_cell


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any, kind: str) -> str:
    """A cell's text as the Markdown tables write it (`format_cell`), with an en dash for a missing value."""
    return format_cell(value, kind, missing="–")


def sort_key(value: Any) -> str:
    """What a sortable cell sorts by: the raw number where there is one, else the text."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value).lower()
    if isinstance(value, (int, float)):
        return repr(value)
    return str(value)


def table(head: Sequence[str], rows: Sequence[Sequence[tuple[str, str]]], cls: str = "sortable",
          numeric: Sequence[bool] = ()) -> str:
    """A table; each cell is (inner HTML, sort key). `numeric` right-aligns columns."""
    def align(i: int) -> str:
        return ' class="num"' if i < len(numeric) and numeric[i] else ""

    ths = "".join(f"<th{align(i)} title=\"click to sort\">{h}</th>" if "sortable" in cls else f"<th{align(i)}>{h}</th>"
                  for i, h in enumerate(head))
    trs = "".join(
        "<tr>" + "".join(f'<td{align(i)} data-sort="{esc(key)}">{inner}</td>' for i, (inner, key) in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f'<table class="{cls}"><thead><tr>{ths}</tr></thead><tbody>{trs}</tbody></table>'


def markdown(text: str) -> str:
    """The Markdown our commands write (headings, paragraphs, pipe tables) as HTML."""
    out, para, rows = [], [], []

    def flush() -> None:
        if para:
            out.append(f"<p>{esc(' '.join(para))}</p>")
            para.clear()
        if rows:
            cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows]
            body = [r for r in cells[1:] if not all(re.fullmatch(r":?-+:?", c) for c in r)]
            numeric = [all(_is_number(r[i]) for r in body if i < len(r)) for i in range(len(cells[0]))]
            out.append(table([esc(h) for h in cells[0]], [[(esc(c), c) for c in r] for r in body], "plain", numeric))
            rows.clear()

    for line in text.splitlines():
        if line.lstrip().startswith("|"):
            if para:
                flush()
            rows.append(line)
            continue
        if rows:
            flush()
        if not line.strip():
            flush()
        elif m := re.match(r"#+\s+(.*)", line):
            flush()
            out.append(f"<h4>{esc(m.group(1))}</h4>")
        else:
            para.append(line.strip())
    flush()
    return "\n".join(out)


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
        return True
    except ValueError:
        return text in ("–", "-", "")


def page(title: str, body: str, depth: int, plotly: bool = False, crumbs: Sequence[tuple[str, str]] = ()) -> str:
    """A whole page; `depth` is how many folders below the report root it lives (for relative links)."""
    up = "../" * depth
    nav = " › ".join([f'<a href="{up}index.html">All studies</a>', *(f'<a href="{h}">{esc(t)}</a>' if h else esc(t) for t, h in crumbs)])
    script = f'<script src="{up}assets/plotly.min.js"></script>' if plotly else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)} · dla report</title><link rel="stylesheet" href="{up}assets/report.css">{script}</head>
<body><nav>{nav}</nav><main>
{body}
</main><footer>Written by <code>dla report</code> from run directories; open offline, zip and send as is.</footer>
<script src="{up}assets/report.js"></script></body></html>
"""


CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --bg2: #f6f8fa; --accent: #0969da; --warn: #9a6700; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: var(--fg); }
nav { padding: 10px 28px; background: #24292f; color: #fff; font-size: 14px; }
nav a { color: #fff; }
main { max-width: 1280px; margin: 0 auto; padding: 8px 28px 28px; }
footer { max-width: 1280px; margin: 0 auto; padding: 12px 28px 28px; color: var(--muted); font-size: 13px; }
h1 { font-size: 26px; margin: 18px 0 4px; }
h2 { font-size: 19px; margin: 28px 0 8px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 16px; margin: 18px 0 6px; }
h4 { font-size: 14px; margin: 12px 0 4px; }
a { color: var(--accent); text-decoration: none; }
a:hover { text-decoration: underline; }
p.lead { color: var(--muted); margin: 0 0 12px; }
code, pre { font: 13px/1.45 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
pre { background: var(--bg2); border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px; overflow: auto; max-height: 480px; }
pre.cmd { background: #24292f; color: #f0f6fc; border: 0; white-space: pre-wrap; word-break: break-all; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 14px; margin: 6px 0 14px; }
th, td { padding: 5px 10px; border-bottom: 1px solid var(--line); text-align: left; white-space: nowrap; }
th { background: var(--bg2); font-weight: 600; position: sticky; top: 0; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th::after { content: " ↕"; color: #b0b8c1; font-size: 11px; }
table.sortable th[data-dir=asc]::after { content: " ▲"; color: var(--fg); }
table.sortable th[data-dir=desc]::after { content: " ▼"; color: var(--fg); }
.badges { white-space: normal; min-width: 200px; }
tbody tr:hover { background: #f3f7fd; }
tr.best td:first-child { font-weight: 600; }
th.cfg { background: #eef4fb; }
.badge { display: inline-block; padding: 0 7px; margin: 0 3px 2px 0; border-radius: 10px; font-size: 12px; background: #ddf4ff; color: #0550ae; }
.badge.warn { background: #fff8c5; color: var(--warn); }
.badge.bad { background: #ffebe9; color: #cf222e; }
.note { background: #fff8c5; border: 1px solid #d4a72c66; padding: 8px 12px; border-radius: 6px; }
.headline { font-size: 22px; font-weight: 600; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 10px 0; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 8px 14px; min-width: 150px; }
.card .k { color: var(--muted); font-size: 12px; }
.gallery { display: flex; flex-wrap: wrap; gap: 14px; align-items: flex-start; }
figure { margin: 0; border: 1px solid var(--line); border-radius: 6px; padding: 6px; background: #fff; max-width: 100%; }
figure img { display: block; max-width: 100%; max-height: 560px; width: auto; height: auto; }
figcaption { font-size: 12px; color: var(--muted); padding-top: 4px; }
details { margin: 8px 0; }
summary { cursor: pointer; font-weight: 600; }
.plot { width: 100%; min-height: 360px; }
.muted { color: var(--muted); }
"""

JS = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("thead th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var dir = th.dataset.dir === "desc" ? "asc" : "desc";
      table.querySelectorAll("thead th").forEach(function (h) { delete h.dataset.dir; });
      th.dataset.dir = dir;
      var key = function (row) {
        var v = row.cells[col].dataset.sort;
        return v !== "" && !isNaN(Number(v)) ? Number(v) : v.toLowerCase();
      };
      var body = table.tBodies[0];
      Array.from(body.rows).sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === "" || y === "") return x === y ? 0 : (x === "" ? 1 : -1);  /* blanks last */
        var c = typeof x === typeof y ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x === "number" ? -1 : 1);
        return dir === "asc" ? c : -c;
      }).forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""
