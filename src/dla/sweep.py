"""`dla sweep`: a YAML grid over a base experiment, run as ordinary runs under one sweep directory.

A sweep file is a YAML file in configs/ with a top-level `sweep:` section:

    sweep:
      base: lab1-cnn                       # the experiment every run starts from
      grid: {model.depth: [9, 17, 48], model.residual: [false, true]}
      run_name: "Depth-{model.depth}{model.residual}"
      labels: {model.residual: {false: "", true: "-skip"}}   # how values print in run names
      plot: {x: model.depth, series: model.residual,        # test accuracy against x, a line per series
             series_labels: {false: plain, true: residual}}

Runs go to RUNS_DIR/<sweep>/<tag>/<run name>, where the tag names the overrides (or `sweep_name=`).
Running the same command again skips finished runs and resumes an interrupted one from its
checkpoint, then (re)writes table.md, curves.png, the x-plot and their manifest.json in the sweep directory.
"""

from __future__ import annotations

import itertools
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dla.config import check_folder_name, find_experiment, load_experiment, load_run_config
from dla.yamlfile import read_yaml
from dla.errors import ConfigError
from dla.kind import IMAGE_CLASSIFIER, get_kind, registered
from dla.manifest import write_manifest
from dla.report.plots import plot_overlaid, plot_xy
from dla.report.tables import markdown_table
from dla.rundir import RunDir

FINISHED = ("completed", "stopped early")


@dataclass
class SweepSpec:
    name: str
    base: str
    grid: dict[str, list[Any]]
    run_name: str
    labels: dict[str, dict[str, str]] = field(default_factory=dict)
    plot: dict[str, Any] = field(default_factory=dict)

    def combos(self) -> list[dict[str, Any]]:
        keys = list(self.grid)
        return [dict(zip(keys, values)) for values in itertools.product(*self.grid.values())]

    def label(self, key: str, value: Any) -> str:
        text = _text(value)
        return self.labels.get(key, {}).get(text, text)

    def name_for(self, combo: dict[str, Any]) -> str:
        return re.sub(r"\{([^}]+)\}", lambda m: self.label(m.group(1), combo[m.group(1)]), self.run_name)


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


SWEEP_KEYS = ("base", "grid", "run_name", "labels", "plot")
PLOT_KEYS = ("x", "series", "series_labels", "y")


def load_sweep(name: str) -> SweepSpec:
    """The sweep file `name`, checked whole: its sections, the grid's keys and values, every {key} of
    run_name and the plot's keys (config values are checked when the runs' configs load)."""
    path = find_experiment(name)
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict) or "sweep" not in raw:
        raise ConfigError(f"{path} is an experiment, not a sweep (no sweep: section); use dla train {name}")
    s = raw["sweep"]
    if not isinstance(s, dict) or not s:
        raise ConfigError(f"{path}: the sweep: section must be a mapping with base and grid, got {s!r}")
    unknown = [k for k in s if k not in SWEEP_KEYS]
    if unknown:
        raise ConfigError(f"{path}: unknown key sweep.{unknown[0]}; valid: {', '.join(SWEEP_KEYS)}")
    missing = [k for k in ("base", "grid") if k not in s]
    if missing:
        raise ConfigError(f"{path}: sweep needs {', '.join(missing)}")
    if not isinstance(s["base"], str) or not s["base"]:
        raise ConfigError(f"{path}: sweep.base must name an experiment (e.g. lab1-cnn), got {s['base']!r}")
    if not isinstance(s["grid"], dict) or not s["grid"]:
        raise ConfigError(f"{path}: sweep.grid must map config keys to lists of values "
                          f"(e.g. {{optim.lr: [0.001, 0.003]}}), got {s['grid']!r}")
    grid = {str(k): v if isinstance(v, list) else [v] for k, v in s["grid"].items()}
    empty = [k for k, v in grid.items() if not v]
    if empty:
        raise ConfigError(f"{path}: sweep.grid.{empty[0]} has no values; give at least one")
    keys = ", ".join(grid)
    default_name = "-".join(f"{k.split('.')[-1]}{{{k}}}" for k in grid)
    run_name = s.get("run_name", default_name)
    if not isinstance(run_name, str):
        raise ConfigError(f"{path}: sweep.run_name must be a string such as \"lr{{optim.lr}}\", got {run_name!r}")
    for key in re.findall(r"\{([^}]*)\}", run_name):
        if key not in grid:
            raise ConfigError(f"{path}: sweep.run_name names {{{key}}}, which is not a grid key; grid keys: {keys}")
    labels = s.get("labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(v, dict) for v in labels.values()):
        raise ConfigError(f"{path}: sweep.labels must map grid keys to {{value: text}} mappings, got {labels!r}")
    for key in labels:
        if key not in grid:
            raise ConfigError(f"{path}: sweep.labels.{key} is not a grid key; grid keys: {keys}")
    labels = {k: {_text(a): str(b) for a, b in v.items()} for k, v in labels.items()}
    plot = s.get("plot") or {}
    if not isinstance(plot, dict):
        raise ConfigError(f"{path}: sweep.plot must be a mapping with x and series, got {plot!r}")
    if plot:
        unknown = [k for k in plot if k not in PLOT_KEYS]
        if unknown:
            raise ConfigError(f"{path}: unknown key sweep.plot.{unknown[0]}; valid: {', '.join(PLOT_KEYS)}")
        for part in ("x", "series"):
            if plot.get(part) not in grid:
                raise ConfigError(f"{path}: sweep.plot.{part} must be a grid key ({keys}), got {plot.get(part)!r}")
        if not isinstance(plot.get("y", "test_acc"), str):
            raise ConfigError(f"{path}: sweep.plot.y must name a summary metric (e.g. test_loss), got {plot['y']!r}")
        if not isinstance(plot.get("series_labels") or {}, dict):
            raise ConfigError(f"{path}: sweep.plot.series_labels must be a {{value: text}} mapping")
    return SweepSpec(path.stem, s["base"], grid, run_name, labels, plot)


def check_run_names(spec: SweepSpec) -> None:
    """Every grid point's run name is one folder name, and no two points share one."""
    seen: dict[str, dict[str, Any]] = {}
    for combo in spec.combos():
        name = spec.name_for(combo)
        try:
            check_folder_name(name, "sweep.run_name")
        except ConfigError as exc:
            raise ConfigError(f"{spec.name}: {exc} (for {_point(combo)})") from None
        if name in seen:
            raise ConfigError(f"{spec.name}: sweep.run_name {spec.run_name!r} gives {name!r} for both "
                              f"{_point(seen[name])} and {_point(combo)}; put every grid key in it")
        seen[name] = combo


def _point(combo: dict[str, Any]) -> str:
    return " ".join(f"{k}={_text(v)}" for k, v in combo.items())


def sweep_tag(overrides: list[str]) -> str:
    tag = "_".join(re.sub(r"[^A-Za-z0-9.+-]+", "-", o) for o in overrides)
    return tag[:120] or "default"


def run_sweep(name: str, overrides: list[str], data_root: Path) -> Path:
    """Run (or resume) every grid point of sweep `name`, then write its table and plots."""
    from dla import experiment

    spec = load_sweep(name)
    own = [o for o in overrides if o.startswith("sweep_name=")]
    rest = [o for o in overrides if not o.startswith("sweep_name=")]
    for o in rest:  # a grid key given on the command line narrows the grid to that value
        key, _, value = o.partition("=")
        if key in spec.grid:
            try:
                spec.grid[key] = [yaml.safe_load(value)]
            except yaml.YAMLError:
                raise ConfigError(f"{o}: {value!r} is not a valid value") from None
    rest = [o for o in rest if o.partition("=")[0] not in spec.grid]
    check_run_names(spec)
    tag = own[0].partition("=")[2] if own else sweep_tag(rest)
    check_folder_name(tag, "sweep_name")
    configs = []
    for combo in spec.combos():
        cfg = load_experiment(spec.base, [*rest, *(f"{k}={_text(v)}" for k, v in combo.items())])
        configs.append((spec.name_for(combo), combo, cfg))  # every config is validated before any run starts
    sweep_dir = Path(configs[0][2].runs_dir) / spec.name / tag
    for run_name, _, _ in configs:  # what is there already: runs of an earlier call, nothing of the user's
        run = RunDir(sweep_dir / run_name)
        if run.path.exists() and not run.config.is_file() and (run.path.is_file() or any(
                p.is_file() or p.is_symlink() for p in run.path.rglob("*"))):
            raise ConfigError(f"{run.path} is in the way: not a run directory (no config.yaml); move it, "
                              f"or give the sweep another folder with sweep_name=NAME")
        run.read_summary()  # a damaged summary.json stops here, naming it
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / "sweep.yaml").write_text(
        yaml.safe_dump({"sweep": spec.name, "base": spec.base, "grid": spec.grid, "overrides": rest}, sort_keys=False)
    )
    for i, (run_name, _, cfg) in enumerate(configs, 1):
        path = sweep_dir / run_name
        run = RunDir(path)
        status = run.read_summary().get("status")
        print(f"[{i}/{len(configs)}] {run_name}: ", end="", flush=True)
        if status in FINISHED:
            print(f"{status}, skipped")
            continue
        if run.last_state.is_file():
            print("resuming")
            experiment.train(load_run_config(run), data_root, resume=run)
            continue
        if path.exists():
            shutil.rmtree(path)  # started but never checkpointed: nothing to keep
        print("starting")
        experiment.train(cfg, data_root, run_path=path)
    write_sweep_report(sweep_dir, spec)
    return sweep_dir


def write_sweep_report(sweep_dir: Path, spec: SweepSpec) -> None:
    rows, histories, points, finished = [], {}, [], []
    for combo in spec.combos():
        run = RunDir(sweep_dir / spec.name_for(combo))
        summary = run.read_summary()
        if summary.get("status") not in FINISHED:
            continue
        name = spec.name_for(combo)
        rows.append({**summary, "name": name})
        histories[name] = run.read_metrics()
        finished.append((name, combo, summary, histories[name]))
        if spec.plot:
            value = combo[spec.plot["series"]]
            label = {_text(k): str(v) for k, v in (spec.plot.get("series_labels") or {}).items()}.get(
                _text(value), spec.label(spec.plot["series"], value)
            )
            points.append((combo[spec.plot["x"]], label, summary))
    kinds = {r.get("kind") for r in rows}
    kind = get_kind(kinds.pop() if len(kinds) == 1 and kinds <= set(registered()) else IMAGE_CLASSIFIER)
    table = markdown_table(rows, kind.sweep_columns)
    (sweep_dir / "table.md").write_text(table)
    print(f"\n{sweep_dir}\n{table}", end="")
    figures = []
    if histories:
        plot_overlaid(histories, sweep_dir / "curves.png", metrics=kind.curve_metrics)
        figures.append({"file": "curves.png", "caption": "validation curves of every run", "same_as": "training-curves"})
    if points:
        x, y = spec.plot["x"], spec.plot.get("y", "test_acc")
        series = {}
        for xv, label, summary in points:
            value = summary.get(y)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                series.setdefault(label, []).append((xv, 100 * value if y == "test_acc" else value))
        if series:
            out = sweep_dir / f"{x.split('.')[-1]}.png"
            plot_xy(series, out, xlabel=x, ylabel="test accuracy (%)" if y == "test_acc" else y.replace("_", " "))
            figures.append({"file": out.name, "caption": f"{y} against {x}, a line per {spec.plot['series']}"})
            print(f"wrote {sweep_dir / 'table.md'}, {sweep_dir / 'curves.png'}, {out}")
        else:
            print(f"no x-plot: no finished run's summary.json has a number for sweep.plot.y={y}")
    extra_figures, extra_tables = kind.sweep_figures(sweep_dir, finished) if finished else ([], [])
    write_manifest(sweep_dir, "sweep", "Sweep plots", figures + extra_figures,
                   [{"file": "table.md", "same_as": "runs-table"}, *extra_tables])
