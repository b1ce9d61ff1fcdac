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


TARGETED_COLUMNS = (*COLUMNS, ("target success (%)", "success", "pct"))


def run_attack(run: RunDir, method: str, epsilons: Sequence[float], steps: int, n: int,
               data_root: Path, target: int | str | None = None) -> dict[str, Any]:
    """Attack `n` test images of an image-classifier run at each eps; write RUN/attack/ atomically.

    With `target` (a class index, "random" or "least-likely") the attack is targeted; images whose
    true class is the target are left out, and the table adds the success rate."""
    from dla.analysis.adversarial import accuracy_under_attack, choose_targets, plot_gallery
    from dla.data.batches import to_unit_float
    from dla.data.ood import sample
    from dla.experiment import class_names, load_data, load_run_model
    from dla.report.plots import plot_xy
    from dla.report.tables import markdown_table

    check_attack_args(method, epsilons, steps, n)
    require_run_kind(load_run_config(run), "image-classifier", "dla attack", run.path)
    model, cfg = load_run_model(run)
    classes = class_names(cfg)
    if isinstance(target, int) and not 0 <= target < len(classes):
        raise DlaError(f"--target {target}: {run.path} has {len(classes)} classes (0-{len(classes) - 1})")
    data = load_data(cfg, data_root)
    test = sample(data.test, n, 0)
    x, y = to_unit_float(test.x), test.y
    targets = None
    if target is not None:
        targets = choose_targets(model, x, y, target, len(classes))
        keep = targets != y
        x, y, targets = x[keep], y[keep], targets[keep]
        if not len(y):
            raise DlaError(f"--target {target}: every sampled image already is of the target class")
    rows = accuracy_under_attack(model, x, y, method, list(epsilons), steps, targets=targets)
    table = markdown_table(rows, COLUMNS if targets is None else TARGETED_COLUMNS)
    aim = "" if target is None else f", targeted ({'class ' + classes[target] if isinstance(target, int) else target})"
    header = f"{method}{aim} on {len(y)} {data.source} test images; run {run.path}\n\n"
    name = method if target is None else f"{method}_target-{target}"
    out = run.path / "attack"
    with atomic_dir(out) as tmp:
        (tmp / f"{name}.md").write_text(header + table)
        series = {"accuracy": [(r["eps_255"], 100 * r["acc"]) for r in rows]}
        if targets is not None:
            series["target success"] = [(r["eps_255"], 100 * r["success"]) for r in rows]
        plot_xy(series if targets is not None else {method: series["accuracy"]}, tmp / f"{name}_accuracy.png",
                xlabel="eps (x 1/255)", ylabel="test accuracy (%)" if targets is None else "%")
        plot_gallery(model, x[:6], y[:6], classes, method, list(epsilons), tmp / f"{name}_gallery.png", steps,
                     None if targets is None else targets[:6])
    return {"rows": rows, "header": header, "table": table, "out": out}
