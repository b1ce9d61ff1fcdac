"""`dla report`: a self-contained, interactive HTML site of run directories.

    report/
      index.html              every study (experiment folder or sweep) with its runs, best run, headline
      study/<name>.html       sortable table (headline metrics + the config keys that differ), overlaid
                              curves, the study's figures (sweep plots, gradient flow, the manifests'
                              series overlaid across runs) and every run's own figures
      run/<name>.html         one run: summary, curves, figures, config, the command that reproduces it
      assets/                 plotly.min.js (written once, no CDN), report.css, report.js
      files/                  copied images, so the folder can be zipped and opened anywhere

Interactive plots use plotly: its figures are JSON plus one JavaScript file that works offline,
with hover values and legend clicks that hide a run. The site is built from run directories only;
nothing is trained or evaluated.

A run's figures, tables and series come from the manifest.json of each of its sub-folders (and a
sweep's from its folder's), written by the study that made them (`dla.manifest`); each is shown
under its manifest's title, in the order of `dla.manifest.STUDY_ORDER`. A new study needs no edit
here. A folder written before manifests is shown through `legacy_manifest`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from dla.errors import DlaError
from dla.kind import RunKind, legacy_kind, registered
from dla.io import atomic_dir, unique_name
from dla.manifest import legacy_manifest, read_manifest, study_rank
from dla.report.html import CSS, JS, esc, fmt, markdown, page, sort_key, table
from dla.report.tables import markdown_table, run_columns
from dla.rundir import RunDir, find_runs
from dla.yamlfile import read_yaml

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")


def run_kind(config: dict[str, Any], summary: dict[str, Any]) -> RunKind:
    """The registered kind a run's config declares (`kind:`); a config without one, or naming a kind this
    version does not know, is told apart by its data set and summary (`dla.kind.legacy_kind`)."""
    kinds, declared = registered(), config.get("kind")
    return kinds[declared if declared in kinds else legacy_kind(config, summary)]


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys (`optim.lr`); lists and scalars are values."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def differing_keys(configs: list[dict[str, Any]], ignore: tuple[str, ...] = ("run_name",)) -> list[str]:
    """The dotted config keys whose values are not the same in every config (a missing key differs)."""
    flats = [flatten(c) for c in configs]
    keys = list(dict.fromkeys(k for f in flats for k in f))
    missing = object()
    return [k for k in keys if k not in ignore
            and len({json.dumps(f.get(k, missing), sort_keys=True, default=repr) for f in flats}) > 1]


@dataclass
class Run:
    """What the report knows about one run directory."""

    dir: RunDir
    config: dict[str, Any]
    summary: dict[str, Any]
    history: list[dict[str, Any]]
    torn: bool
    kind: RunKind
    slug: str = ""
    name: str = ""  # its name within its study
    manifests: list[tuple[Path, dict[str, Any]]] | None = None  # (folder, manifest) of its studies, read once

    @property
    def status(self) -> str:
        return self.summary.get("status", "no summary")

    def value(self, key: str) -> Any:
        return self.summary.get(key)


@dataclass
class Study:
    """An experiment folder (runs/<experiment>/) or a sweep folder (runs/<sweep>/<tag>/)."""

    folder: Path
    runs: list[Run] = field(default_factory=list)
    sweep: dict[str, Any] | None = None
    slug: str = ""
    manifest: dict[str, Any] | None = None  # of its own folder (a sweep's plots), read once
    read: bool = False

    @property
    def title(self) -> str:
        return self.sweep["sweep"] if self.sweep else self.folder.name

    @property
    def kind(self) -> RunKind:
        names = [r.kind.name for r in self.runs]
        return registered()[max(set(names), key=names.count)]


@dataclass
class SiteResult:
    index: Path
    table: str  # the Markdown table of every run, for the terminal


def load_run(run: RunDir) -> Run:
    """What the report shows of a run; a damaged config.yaml, summary.json or metrics.jsonl raises a
    `DlaError` naming the file."""
    config = read_yaml(run.config) or {}  # not UTF-8 or not YAML: "FILE: ..."
    summary = run.read_summary()
    history = run.read_metrics()
    config = config if isinstance(config, dict) else {}
    return Run(run, config, summary, history, run.torn_metrics(), run_kind(config, summary))


def load_runs(paths: list[str | Path]) -> list[Run]:
    """Every run under `paths`; a run with a damaged file is left out with a warning line naming the file."""
    runs = []
    for run in find_runs(paths):
        try:
            runs.append(load_run(run))
        except DlaError as exc:
            print(f"dla: warning: {' '.join(str(exc).split())}; run left out of the report", file=sys.stderr)
            continue
        if runs[-1].torn:
            print(f"dla: warning: {run.metrics}: its last line is torn (a crash mid-write); the run is shown "
                  "without it, marked torn metrics", file=sys.stderr)
    if not runs:
        raise DlaError(f"no readable run under {', '.join(map(str, paths))}: each has a damaged file (above)")
    return runs


REPORT_MARKER = ".dla-report"  # in every report folder: the files dla wrote there, the only ones a rebuild replaces


def check_report_out(out: str | Path) -> set[str]:
    """Check that `out` can take a report before any work: a new folder, an empty one or a dla report
    (with its marker file). Returns the files the report already there wrote (relative, POSIX)."""
    out = Path(out)
    target = out.resolve()
    here = Path.cwd().resolve()
    if target == here or target in here.parents:
        raise DlaError(f"--out {out}: the current folder, or one above it, cannot become a report; name a new folder")
    for folder in (target, *target.parents):
        if folder.exists():
            if not folder.is_dir():
                raise DlaError(f"--out {out}: " + ("a file, not a folder" if folder == target else
                                                   f"{folder} is a file, not a folder"))
            break
    if not target.exists():
        return set()
    marker = target / REPORT_MARKER
    try:
        if not marker.is_file():
            if any(target.iterdir()):
                raise DlaError(f"--out {out}: a folder that is not a dla report (it has no {REPORT_MARKER} file); "
                               "dla report replaces only a report it wrote: choose a new or empty folder")
            return set()
        files = json.loads(marker.read_text(encoding="utf-8"))["files"]
    except OSError as exc:
        raise DlaError(f"--out {out}: cannot read the folder ({exc.strerror or exc})") from None
    except (ValueError, TypeError, KeyError):
        files = None
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise DlaError(f"{marker}: a damaged report marker; remove {out} or choose another --out")
    return set(files)


def _keep_foreign(out: Path, tmp: Path, ours: set[str], written: set[str]) -> None:
    """Put into the new report `tmp` (hard links, else copies) every file and empty folder of the old report
    `out` that no report wrote (the user's): replacing the folder then deletes only what dla wrote."""
    if not out.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(out):
        here = Path(dirpath)
        rel_dir = here.relative_to(out)
        entries = [*filenames, *(d for d in dirnames if (here / d).is_symlink())]
        if not entries and not dirnames and rel_dir != Path(".") and not any(
                f.startswith(f"{rel_dir.as_posix()}/") for f in ours):
            (tmp / rel_dir).mkdir(parents=True, exist_ok=True)  # a folder of the user's, empty
        for name in entries:
            rel = (rel_dir / name).as_posix()
            if rel in ours or rel == REPORT_MARKER:
                continue
            dst = tmp / rel
            try:
                if rel in written or dst.exists() or dst.is_symlink():
                    raise FileExistsError
                dst.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(here / name, dst, follow_symlinks=False)
                except OSError:
                    shutil.copy2(here / name, dst, follow_symlinks=False)
            except OSError:
                raise DlaError(f"{out / rel}: a file dla report did not write, where the new report writes its own; "
                               "move it, then run the report again") from None


def group_studies(runs: list[Run]) -> list[Study]:
    """Runs grouped by their parent folder; a parent with sweep.yaml is a sweep."""
    studies: dict[Path, Study] = {}
    for run in runs:
        folder = run.dir.path.parent
        if folder not in studies:
            sweep = _read_sweep(folder / "sweep.yaml")
            studies[folder] = Study(folder, sweep=sweep)
        run.name = run.dir.name
        studies[folder].runs.append(run)
    used: set[str] = set()
    for study in studies.values():
        study.runs.sort(key=lambda r: _natural(r.name))  # Depth-9 before Depth-17
        study.slug = unique_name(_slug(study.title), used)
        for run in study.runs:
            run.slug = unique_name(_slug(f"{study.title}-{run.name}"), used)
    return list(studies.values())


def _read_sweep(path: Path) -> dict[str, Any] | None:
    """A sweep folder's sweep.yaml, or None (no sweep, or a damaged file: the folder is shown as a plain study)."""
    if not path.is_file():
        return None
    try:
        sweep = read_yaml(path)
    except DlaError as exc:
        print(f"dla: warning: {' '.join(str(exc).split())}; its folder is shown as a plain study", file=sys.stderr)
        return None
    grid = sweep.get("grid") or {} if isinstance(sweep, dict) else None
    if (not isinstance(sweep, dict) or "sweep" not in sweep or not isinstance(grid, dict)
            or not all(isinstance(v, list) for v in grid.values()) or not isinstance(sweep.get("overrides") or [], list)):
        print(f"dla: warning: {path}: not a sweep record (sweep, base, grid); its folder is shown as a plain study",
              file=sys.stderr)
        return None
    return sweep


def _natural(text: str) -> list[Any]:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text)]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[:80] or "x"


def headline(run: Run) -> tuple[str, str, str, bool]:
    """(header, key, format, higher is better) of the run's headline metric: the test metric, else the best val."""
    first = run.kind.report_columns[0]
    return first if run.value(first.key) is not None or run.kind.fallback is None else run.kind.fallback


def best_run(study: Study) -> Run | None:
    scored = [(r, headline(r)) for r in study.runs]
    scored = [(r, h) for r, h in scored if isinstance(r.value(h[1]), (int, float))]
    if not scored:
        return None
    return max(scored, key=lambda rh: rh[0].value(rh[1][1]) * (1 if rh[1][3] else -1))[0]


def build_site(paths: list[str | Path], out: str | Path) -> SiteResult:
    """Write the report folder `out` (atomically) from the runs under `paths`; return its index.html."""
    out = Path(out)
    out = out.resolve() if out.is_symlink() else out
    ours = check_report_out(out)
    runs = load_runs(paths)
    studies = group_studies(runs)
    with atomic_dir(out, replace=True) as tmp:
        assets = tmp / "assets"
        assets.mkdir()
        from plotly.offline import get_plotlyjs

        (assets / "plotly.min.js").write_text(get_plotlyjs())
        (assets / "report.css").write_text(CSS)
        (assets / "report.js").write_text(JS)
        (tmp / "study").mkdir()
        (tmp / "run").mkdir()
        for study in studies:
            (tmp / "study" / f"{study.slug}.html").write_text(study_page(study, tmp))
            for run in study.runs:
                (tmp / "run" / f"{run.slug}.html").write_text(run_page(run, study, tmp))
        (tmp / "index.html").write_text(index_page(studies, paths))
        written = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        (tmp / REPORT_MARKER).write_text(json.dumps({"dla_report": 1, "files": written}, indent=0) + "\n")
        _keep_foreign(out, tmp, ours, set(written))  # pages of runs no longer reported go; the user's files stay
    rows = [{**r.summary, "name": r.dir.label} for r in runs]
    return SiteResult(out / "index.html", markdown_table(rows, run_columns(rows)))


# ---------------------------------------------------------------- pages

def index_page(studies: list[Study], paths: list[str | Path]) -> str:
    n_runs = sum(len(s.runs) for s in studies)
    rows = []
    for study in studies:
        best = best_run(study)
        head = headline(best) if best else None
        torn = sum(r.torn for r in study.runs)
        unfinished = sum(r.status not in ("completed", "stopped early") for r in study.runs)
        badges = "".join(f'<span class="badge">{esc(b)}</span>' for b in study_contents(study))
        if unfinished:
            badges += f'<span class="badge warn">{unfinished} unfinished</span>'
        if torn:
            badges += f'<span class="badge bad">{torn} torn metrics</span>'
        data = ", ".join(sorted({str(r.value("data")) for r in study.runs if r.value("data")}))
        where = study.folder.name if study.sweep else ""
        rows.append([
            (f'<a href="study/{study.slug}.html">{esc(study.title)}</a>'
             + (f' <span class="muted" title="{esc(where)}">({esc(_short(where, 40))})</span>' if where else ""),
             study.title),
            (esc("sweep of " + study.kind.title + "s" if study.sweep else study.kind.title), study.kind.name),
            (str(len(study.runs)), str(len(study.runs))),
            (f'<a href="run/{best.slug}.html">{esc(best.name)}</a>' if best else "–", best.name if best else ""),
            (f"{esc(head[0])} <b>{fmt(best.value(head[1]), head[2])}</b>" if best else "–",
             sort_key(best.value(head[1])) if best else ""),
            (esc(data), data),
            (f'<div class="badges">{badges}</div>', ""),
        ])
    body = (f"<h1>Runs</h1><p class=lead>{_count(n_runs, 'run')} in {_count(len(studies), 'study', 'studies')}, from "
            f"{esc(', '.join(map(str, paths)))}; written {time.strftime('%Y-%m-%d %H:%M')}. "
            "Click a study for its table, curves and figures; click a column to sort.</p>"
            + '<div class="scroll">'
            + table(["study", "kind", "runs", "best run", "headline (best run)", "data", "contents"], rows,
                    numeric=[False, False, True])
            + "</div>")
    return page("Runs", body, depth=0)


def study_contents(study: Study) -> list[str]:
    """Short labels of what a study's page shows beyond the table and curves."""
    sweep = study_manifest(study)
    found = ["sweep plot"] if sweep and any(not f.get("same_as") for f in sweep["figures"]) else []
    if any((r.dir.path / "gradients.jsonl").is_file() for r in study.runs):
        found.append("gradient flow")
    found += list(dict.fromkeys(m["title"] for r in study.runs for _, m in run_manifests(r) if m["study"] != "plots"))
    return found + (["samples"] if any(r.dir.sample.is_file() for r in study.runs) else [])


def study_page(study: Study, root: Path) -> str:
    configs = [r.config for r in study.runs]
    diff = differing_keys(configs) if len(configs) > 1 else []
    best = best_run(study)
    columns = study.kind.report_columns
    head = ["run", "status", *(c[0] for c in columns), *(f"<code>{esc(k)}</code>" for k in diff)]
    rows = []
    for run in study.runs:
        flat = flatten(run.config)
        status = esc(run.status) + (' <span class="badge bad">torn metrics</span>' if run.torn else "")
        row = [(f'<a href="../run/{run.slug}.html">{esc(run.name)}</a>' + (" ★" if run is best else ""), run.name),
               (status, run.status)]
        row += [(fmt(run.value(key), f), sort_key(run.value(key))) for _, key, f, _ in columns]
        row += [(esc(fmt(flat.get(k), "str")), sort_key(flat.get(k))) for k in diff]
        rows.append(row)
    numeric = [False, False, *(True for _ in columns), *(isinstance(flatten(configs[0]).get(k), (int, float)) for k in diff)]
    parts = [f"<h1>{esc(study.title)}</h1>", study_lead(study)]
    if best:
        h = headline(best)
        parts.append(f'<div class="cards"><div class="card"><div class="k">best run</div><div class="headline">'
                     f'<a href="../run/{best.slug}.html">{esc(best.name)}</a></div></div>'
                     f'<div class="card"><div class="k">{esc(h[0])}</div><div class="headline">{fmt(best.value(h[1]), h[2])}'
                     f'</div></div><div class="card"><div class="k">runs</div><div class="headline">{len(study.runs)}'
                     "</div></div></div>")
    if any(r.torn for r in study.runs):
        parts.append('<p class="note">A run marked <b>torn metrics</b> ended its metrics.jsonl with a partial line '
                     "(a crash mid-write); that line is left out.</p>")
    parts.append("<h2>Runs</h2>")
    if diff:
        parts.append(f'<p class="muted">Shaded columns are the config keys that differ between runs; '
                     f"the {len(flatten(configs[0])) - len(diff)} shared keys are folded below. Click a column to sort.</p>")
    table_html = table(head, rows, numeric=numeric)
    table_html = _shade_config_headers(table_html, len(columns) + 2)
    parts.append(f'<div class="scroll">{table_html}</div>')
    parts.append(shared_config(configs, diff))
    figures = []
    if any(r.history for r in study.runs):
        figures.append(("Training curves", curves_div(study.runs, f"curves-{study.slug}")))
    for title, html_ in study_figures(study, root):
        figures.append((title, html_))
    for title, html_ in figures:
        parts.append(f"<h2>{esc(title)}</h2>{html_}")
    per_run = [(run, run_artefacts(run, root, "../")) for run in study.runs]
    per_run = [(run, html_) for run, html_ in per_run if html_]
    if per_run:
        parts.append("<h2>Each run's figures</h2>")
        for run, html_ in per_run:
            parts.append(f'<details{" open" if len(per_run) <= 3 else ""}><summary>{esc(run.name)}</summary>{html_}'
                         f'<p><a href="../run/{run.slug}.html">run page →</a></p></details>')
    return page(study.title, "\n".join(parts), depth=1, plotly=bool(figures), crumbs=[(study.title, "")])


def _shade_config_headers(table_html: str, first: int) -> str:
    """Mark the config-key columns' headers (every <th> from index `first`)."""
    count = [0]

    def mark(m: re.Match) -> str:
        count[0] += 1
        return '<th class="cfg"' if count[0] > first else m.group(0)

    return re.sub(r"<th(?= )", mark, table_html)


def study_lead(study: Study) -> str:
    """One line of what the study is, and for a sweep the command that reruns or resumes it."""
    folder = f'<span class="muted">in <code>{esc(study.folder)}</code></span>'
    if not study.sweep:
        n = len(study.runs)
        return f'<p class="lead">{n} {esc(study.kind.title)} run{"s" if n > 1 else ""} {folder}</p>'
    grid = ", ".join(f"<code>{esc(k)}</code> ∈ {{{esc(', '.join(fmt(x, 'str') for x in v))}}}"
                     for k, v in (study.sweep.get("grid") or {}).items())
    command = shlex.join(["dla", "sweep", str(study.sweep["sweep"]), *map(str, study.sweep.get("overrides") or [])])
    return (f'<p class="lead">Sweep over {grid}, each run from <code>{esc(study.sweep.get("base", ""))}</code>; '
            f'{len(study.runs)} runs {folder}</p>'
            f'<details><summary>Rerun or resume this sweep</summary><pre class="cmd">{esc(command)}</pre></details>')


def shared_config(configs: list[dict[str, Any]], diff: list[str]) -> str:
    flat = flatten(configs[0]) if configs else {}
    shared = {k: v for k, v in flat.items() if k not in diff}
    if not shared:
        return ""
    rows = [[(f"<code>{esc(k)}</code>", k), (esc(fmt(v, "str")), sort_key(v))] for k, v in shared.items()]
    label = "Config shared by every run" if len(configs) > 1 else "Config"
    return f"<details><summary>{label} ({len(shared)} keys)</summary>{table(['key', 'value'], rows, 'plain')}</details>"


def run_page(run: Run, study: Study, root: Path) -> str:
    parts = [f"<h1>{esc(run.dir.label)}</h1>",
             f'<p class="lead">{esc(run.kind.title)} · status <b>{esc(run.status)}</b> · '
             f"<code>{esc(run.dir.path)}</code></p>"]
    if run.torn:
        parts.append(f'<p class="note"><b>Torn metrics:</b> the last line of <code>{esc(run.dir.metrics)}</code> is not '
                     "valid JSON (the run stopped mid-write); the curves show the lines before it.</p>")
    cards = [(h, fmt(run.value(k), f)) for h, k, f, _ in run.kind.report_columns if run.value(k) is not None]
    if cards:
        parts.append('<div class="cards">' + "".join(
            f'<div class="card"><div class="k">{esc(h)}</div><div class="headline">{v}</div></div>' for h, v in cards)
            + "</div>")
    parts.append("<h2>Reproduce</h2>" + f'<pre class="cmd">{esc(reproduce_command(run))}</pre>')
    if run.summary.get("resume_with"):
        parts.append(f'<p>Resume: <code>{esc(run.summary["resume_with"])}</code></p>')
    plotly = bool(run.history)
    if run.history:
        parts.append("<h2>Training curves</h2>" + curves_div([run], f"curves-{run.slug}"))
    gradients = gradient_flow([run])
    if gradients:
        plotly = True
        parts.append("<h2>Gradient flow</h2>" + gradients)
    for title, html_ in series_plots([run]):
        plotly = True
        parts.append(f"<h2>{esc(title)}</h2>" + html_)
    artefacts = run_artefacts(run, root, "../")
    if artefacts:
        parts.append(artefacts)
    summary_rows = [[(f"<code>{esc(k)}</code>", k), (esc(fmt(v, "str")), sort_key(v))] for k, v in run.summary.items()]
    if summary_rows:
        parts.append("<h2>Summary</h2>" + f'<details open><summary>summary.json</summary>'
                     f'{table(["key", "value"], summary_rows, "plain")}</details>')
    parts.append("<h2>Config</h2><details><summary>config.yaml (resolved)</summary><pre>"
                 + esc(run.dir.config.read_text(errors="replace")) + "</pre></details>")
    crumbs = [(study.title, f"../study/{study.slug}.html"), (run.name, "")]
    return page(run.dir.label, "\n".join(parts), depth=1, plotly=plotly, crumbs=crumbs)


def reproduce_command(run: Run) -> str:
    """The command that trains the same run again from its resolved config."""
    return shlex.join(["dla", "train", str(run.dir.config)])


# ---------------------------------------------------------------- figures

def folder_manifest(folder: Path, legacy: str | None) -> dict[str, Any] | None:
    """The manifest of a study's folder; for a folder without one (written before manifests), the one
    `legacy_manifest` builds as study `legacy` (None: no legacy view). A damaged manifest.json gets a
    warning line and the legacy view."""
    try:
        manifest = read_manifest(folder)
    except DlaError as exc:
        print(f"dla: warning: {' '.join(str(exc).split())}; its folder is shown from its files", file=sys.stderr)
        manifest = None
    if manifest is None and legacy is not None:
        manifest = legacy_manifest(folder, legacy)
    return manifest


def run_manifests(run: Run) -> list[tuple[Path, dict[str, Any]]]:
    """(folder, manifest) of every study in the run's sub-folders, in the report's order of studies."""
    if run.manifests is None:
        folders = sorted(p for p in run.dir.path.iterdir() if p.is_dir() and not p.is_symlink())
        found = [(f, m) for f in folders if (m := folder_manifest(f, f.name))]
        run.manifests = sorted(found, key=lambda fm: study_rank(fm[1], fm[0].name))
    return run.manifests


def study_manifest(study: Study) -> dict[str, Any] | None:
    """The manifest of the study's own folder (a sweep's plots), if it has one."""
    if not study.read:
        study.manifest, study.read = folder_manifest(study.folder, "sweep" if study.sweep else None), True
    return study.manifest


def manifest_html(folder: Path, manifest: dict[str, Any], base: Path, slug: str, root: Path, up: str,
                  drawn: set[str]) -> str:
    """A manifest's tables and figures (images copied to root/files/<slug>/<path under base>), leaving out
    the entries `same_as` something in `drawn` (what the page draws itself)."""
    notes, images = [], []
    for entry in manifest["tables"]:
        if entry.get("same_as") not in drawn:
            notes.append(f'<div class="scroll">{markdown((folder / entry["file"]).read_text(errors="replace"))}</div>')
    for entry in manifest["figures"]:
        if entry.get("same_as") in drawn:
            continue
        rel = (folder / entry["file"]).relative_to(base)
        target = root / "files" / slug / rel
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(folder / entry["file"], target)
        href = f"{up}files/{slug}/{rel.as_posix()}"
        caption = entry.get("caption") if isinstance(entry.get("caption"), str) else rel.as_posix()
        images.append(f'<figure><a href="{esc(href)}"><img src="{esc(href)}" alt="{esc(caption)}"></a>'
                      f"<figcaption>{esc(caption)}</figcaption></figure>")
    metrics = manifest.get("metrics")
    if isinstance(metrics, dict) and metrics:
        notes.append(f'<details><summary>metrics</summary><pre>{esc(json.dumps(metrics, indent=1, default=str))}</pre>'
                     "</details>")
    return "".join(notes) + (f'<div class="gallery">{"".join(images)}</div>' if images else "")


def run_artefacts(run: Run, root: Path, up: str) -> str:
    """The run's own figures and tables, from its studies' manifests, and its generated sample."""
    drawn = {"training-curves"} if run.history else set()
    parts = []
    for folder, manifest in run_manifests(run):
        html_ = manifest_html(folder, manifest, run.dir.path, run.slug, root, up, drawn)
        if html_:
            parts.append(f"<h3>{esc(manifest['title'])}</h3>{html_}")
    if run.dir.sample.is_file():
        parts.append("<h3>Generated sample</h3><pre>" + esc(run.dir.sample.read_text(errors="replace")) + "</pre>")
    return "\n".join(parts)


def study_figures(study: Study, root: Path) -> list[tuple[str, str]]:
    figures = []
    manifest = study_manifest(study)
    if manifest:
        drawn = {"runs-table", *(["training-curves"] if any(r.history for r in study.runs) else [])}
        if html_ := manifest_html(study.folder, manifest, study.folder, study.slug, root, "../", drawn):
            figures.append((manifest["title"], html_))
    if gradients := gradient_flow(study.runs):
        figures.append(("Gradient flow", gradients))
    figures += series_plots(study.runs)
    return figures


def _plot_html(fig: Any, div_id: str) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id,
                       config={"displaylogo": False, "responsive": True})


def _x_key(run: Run) -> str:
    return "step" if run.kind.unit == "round" else "epoch"


def curves_div(runs: list[Run], div_id: str) -> str:
    """Train (dotted) and validation (solid) loss and accuracy/bits-per-char; a legend entry per run."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    metrics = list(dict.fromkeys(k[4:] for run in runs for r in run.history for k in r
                                 if k.startswith("val_") and k != "val_loss"))
    second = next((m for m in ("acc", "bpc") if m in metrics), metrics[0] if metrics else "acc")
    names = {"acc": ("accuracy (%)", 100.0), "bpc": ("bits per char", 1.0)}
    panels = [("loss", "loss", 1.0), (second, *names.get(second, (second, 1.0)))]
    xs = {_x_key(r) for r in runs}
    x_title = "epoch" if xs == {"epoch"} else "step"
    fig = make_subplots(rows=1, cols=2, subplot_titles=[p[1] for p in panels], horizontal_spacing=0.08)
    for i, run in enumerate(runs):
        color, x = PALETTE[i % len(PALETTE)], _x_key(run)
        shown = False
        for split, dash in (("val", "solid"), ("train", "dot")):
            for col, (metric, label, scale) in enumerate(panels, 1):
                points = [(r[x], r[f"{split}_{metric}"] * scale) for r in run.history
                          if isinstance(r.get(f"{split}_{metric}"), (int, float)) and x in r]
                if not points:
                    continue
                fig.add_trace(go.Scatter(
                    x=[p[0] for p in points], y=[p[1] for p in points], mode="lines+markers",
                    name=run.name, legendgroup=run.slug, showlegend=not shown,
                    line={"color": color, "dash": dash, "width": 2 if split == "val" else 1.5},
                    marker={"size": 5}, hovertemplate=f"{esc(run.name)}<br>{split} {label}: %{{y:.4f}}<br>"
                                                      f"{x} %{{x}}<extra></extra>"), row=1, col=col)
                shown = True
    fig.update_xaxes(title_text=x_title)
    last = max((r.get(x_title, 0) for run in runs for r in run.history), default=0)
    if x_title == "epoch" and last <= 25:
        fig.update_xaxes(dtick=1)  # whole epochs, not 1.2, 1.4, ...
    fig.update_layout(template="plotly_white", height=400, margin={"l": 50, "r": 20, "t": 40, "b": 50},
                      legend={"title": {"text": "run (click to hide)"}}, hovermode="closest")
    note = '<p class="muted">Solid: validation · dotted: training. Hover for values; click a run in the legend to hide it, double-click to show it alone.</p>'
    return note + _plot_html(fig, div_id)


def gradient_flow(runs: list[Run]) -> str:
    """Median gradient norm per layer (input to output) over the logged steps of gradients.jsonl, a line per run."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, run in enumerate(runs):
        path = run.dir.path / "gradients.jsonl"
        if not path.is_file():
            continue
        records = []
        for line in path.read_bytes().splitlines():
            try:
                record = json.loads(line.decode("utf-8"))
            except ValueError:
                continue  # a torn or damaged line: gradients are a diagnostic, the others still tell the story
            layers = record.get("layers") if isinstance(record, dict) else None
            if isinstance(layers, dict) and all(isinstance(v, dict) and isinstance(v.get("grad"), (int, float))
                                                and not isinstance(v.get("grad"), bool) for v in layers.values()):
                records.append(record)
        layers = list(records[0]["layers"]) if records else []
        if not layers:
            continue
        medians = [statistics.median(r["layers"][n]["grad"] for r in records if n in r["layers"]) for n in layers]
        fig.add_trace(go.Scatter(x=list(range(1, len(layers) + 1)), y=medians, text=layers, mode="lines+markers",
                                 name=run.name, line={"color": PALETTE[i % len(PALETTE)]},
                                 hovertemplate=f"{esc(run.name)}<br>layer %{{x}} (%{{text}})<br>median grad norm %{{y:.3g}}<extra></extra>"))
    if not fig.data:
        return ""
    fig.update_layout(template="plotly_white", height=380, margin={"l": 60, "r": 20, "t": 20, "b": 50},
                      xaxis_title="layer (input → output)", yaxis_title="gradient norm (median over steps)",
                      yaxis_type="log", legend={"title": {"text": "run (click to hide)"}})
    names = max((list(t.text) for t in fig.data), key=len)
    if len(names) <= 24:  # name the layers on the axis when they fit
        fig.update_xaxes(tickvals=list(range(1, len(names) + 1)), ticktext=names)
    note = '<p class="muted">From each run\'s gradients.jsonl (<code>train.grad_stats_every</code>); a line that falls towards the input means vanishing gradients.</p>'
    return note + _plot_html(fig, f"gradients-{runs[0].slug}-{len(runs)}")


DASHES = ("solid", "dash", "dot", "dashdot", "longdash")


def series_plots(runs: list[Run]) -> list[tuple[str, str]]:
    """(title, plot) for each `plot` id among the series of the runs' manifests: every series of that id
    overlaid, a colour per run and a dash per series name (e.g. accuracy against ε, FGSM and PGD)."""
    import plotly.graph_objects as go

    plots: dict[str, list[tuple[int, Run, dict[str, Any]]]] = {}
    for i, run in enumerate(runs):
        for _, manifest in run_manifests(run):
            for s in manifest["series"]:
                plots.setdefault(s["plot"], []).append((i, run, s))
    out = []
    for plot_id, entries in plots.items():
        first = entries[0][2]
        names = list(dict.fromkeys(s["name"] for _, _, s in entries))
        fig = go.Figure()
        for i, run, s in entries:
            name = f"{run.name} · {s['name']}" if len(runs) > 1 else s["name"]
            fig.add_trace(go.Scatter(
                x=[p[0] for p in s["points"]], y=[p[1] for p in s["points"]], mode="lines+markers", name=name,
                line={"color": PALETTE[i % len(PALETTE)], "dash": DASHES[names.index(s["name"]) % len(DASHES)]},
                hovertemplate=f"{esc(name)}<br>{esc(str(s.get('x', 'x')))} %{{x}}: %{{y:.4g}}<extra></extra>"))
        fig.update_layout(template="plotly_white", height=360, margin={"l": 60, "r": 20, "t": 20, "b": 50},
                          xaxis_title=str(first.get("x", "")), yaxis_title=str(first.get("y", "")),
                          legend={"title": {"text": "click to hide"}})
        out.append((str(first.get("title") or plot_id), _plot_html(fig, _slug(f"{plot_id}-{runs[0].slug}-{len(runs)}"))))
    return out


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"
