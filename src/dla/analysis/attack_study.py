"""`dla attack RUN`: accuracy under FGSM or PGD at each eps, with a table, a plot and a gallery.

Outputs go to RUN/attack/ (METHOD.md, METHOD_accuracy.png, METHOD_gallery.png), written through a
temporary folder: a run that fails half-way leaves RUN/attack/ as it was.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dla.config import load_run_config, require_run_kind
from dla.errors import DlaError
from dla.io import atomic_dir
from dla.rundir import RunDir

METHODS = ("fgsm", "pgd")
COLUMNS = (("eps", "eps", "sci"), ("eps x 255", "eps_255", "time"), ("accuracy (%)", "acc", "pct"))


def check_attack_args(method: str, epsilons: Sequence[float], steps: int, n: int) -> None:
    """The ranges `run_attack` accepts (the command line checks them too, as it parses)."""
    if method not in METHODS:
        raise DlaError(f"unknown attack {method!r}; valid: {', '.join(METHODS)}")
    if not epsilons or any(not (math.isfinite(e) and 0 <= e <= 1) for e in epsilons):
        raise DlaError(f"--eps: every epsilon must be in [0, 1], got {list(epsilons)}")
    if steps < 1:
        raise DlaError(f"--steps: must be >= 1, got {steps}")
    if n < 1:
        raise DlaError(f"--n: must be >= 1, got {n}")


def run_attack(run: RunDir, method: str, epsilons: Sequence[float], steps: int, n: int,
               data_root: Path) -> dict[str, Any]:
    """Attack `n` test images of an image-classifier run at each eps; write RUN/attack/ atomically."""
    from dla.analysis.adversarial import accuracy_under_attack, plot_gallery
    from dla.data.batches import to_unit_float
    from dla.data.ood import sample
    from dla.experiment import class_names, load_data, load_run_model
    from dla.report.plots import plot_xy
    from dla.report.tables import markdown_table

    check_attack_args(method, epsilons, steps, n)
    require_run_kind(load_run_config(run), "image-classifier", "dla attack", run.path)
    model, cfg = load_run_model(run)
    data = load_data(cfg, data_root)
    test = sample(data.test, n, 0)
    x, y = to_unit_float(test.x), test.y
    rows = accuracy_under_attack(model, x, y, method, list(epsilons), steps)
    table = markdown_table(rows, COLUMNS)
    header = f"{method} on {len(y)} {data.source} test images; run {run.path}\n\n"
    out = run.path / "attack"
    with atomic_dir(out) as tmp:
        (tmp / f"{method}.md").write_text(header + table)
        plot_xy({method: [(r["eps_255"], 100 * r["acc"]) for r in rows]}, tmp / f"{method}_accuracy.png",
                xlabel="eps (x 1/255)", ylabel="test accuracy (%)")
        plot_gallery(model, x[:6], y[:6], class_names(cfg), method, list(epsilons),
                     tmp / f"{method}_gallery.png", steps)
    return {"rows": rows, "header": header, "table": table, "out": out}
