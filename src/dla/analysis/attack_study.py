"""`dla attack RUN`: accuracy under FGSM, PGD, AutoAttack or Carlini-Wagner L2, with a table, a plot and a gallery.

FGSM and PGD give accuracy at each L-infinity eps (targeted too, with the success rate). AutoAttack
reports as RobustBench does: clean accuracy, robust accuracy and the number of images, at each eps
(default 8/255 for colour images, 0.1 for grey 28x28 ones). CW finds a minimal L2 perturbation per
image; its table gives the accuracy left at each L2 radius (an attack counts only if its
perturbation is within the radius) and the median L2 norm of the successful perturbations.

Outputs go to RUN/attack/ (METHOD.md, METHOD_accuracy.png, METHOD_gallery.png and manifest.json, whose
series are the accuracy-against-eps points the report plots), written through a
temporary folder: a run that fails half-way leaves RUN/attack/ as it was.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dla.attacks import ATTACKS, AUTOATTACK_STAGES, stage_key
from dla.config import load_run_config
from dla.kind import require_command
from dla.errors import DlaError
from dla.io import atomic_dir
from dla.manifest import write_manifest
from dla.rundir import RunDir

METHODS = tuple(ATTACKS)  # the registry's names
TARGETED_METHODS = ("fgsm", "pgd")
COLUMNS = (("eps", "eps", "sci"), ("eps x 255", "eps_255", "time"), ("accuracy (%)", "acc", "pct"))
# AutoAttack: as RobustBench reports it, with the accuracy left after each of its attacks but the last
# (which leaves the robust accuracy): a model that only masks gradients holds against APGD and falls to Square.
ROBUST_COLUMNS = (("eps", "eps", "sci"), ("eps x 255", "eps_255", "time"), ("clean accuracy (%)", "clean", "pct"),
                  *((f"after {name} (%)", stage_key(name), "pct") for name in AUTOATTACK_STAGES[:-1]),
                  ("robust accuracy (%)", "acc", "pct"), ("images", "n", "int"))
CW_COLUMNS = (("L2 radius", "eps", "float"), ("accuracy (%)", "acc", "pct"), ("images", "n", "int"))
CW_RADII = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0)
DEFAULT_STEPS = {"pgd": 10, "cw": 100}


def default_epsilons(method: str, channels: int) -> list[float]:
    """FGSM/PGD: a sweep up to 32/255; AutoAttack: the field's one budget, 8/255 for colour images
    and 0.1 for the grey MNIST family; CW: L2 radii."""
    if method == "autoattack":
        return [8 / 255 if channels == 3 else 0.1]
    if method == "cw":
        return list(CW_RADII)
    return [i / 255 for i in (0, 1, 2, 4, 8, 16, 32)]


STEPS_METHODS = ("pgd", "cw")  # FGSM is one step; AutoAttack runs its own budgets
DEFAULT_C = 1.0


def c_values(c: float | Sequence[float] | None) -> tuple[float, ...]:
    """CW's c as a tuple: one number or several (None: the default, 1)."""
    c = DEFAULT_C if c is None else c
    return (float(c),) if isinstance(c, (int, float)) else tuple(float(v) for v in c)


def check_attack_args(method: str, epsilons: Sequence[float] | None, steps: int | None, n: int,
                      target: int | str | None = None, c: float | Sequence[float] | None = None) -> None:
    """The ranges `run_attack` accepts (the command line checks them too, as it parses), and no option
    that the method would ignore: --steps is for pgd and cw, --c for cw, --target for fgsm and pgd."""
    if method not in METHODS:
        raise DlaError(f"unknown attack {method!r}; valid: {', '.join(METHODS)}")
    if steps is not None and method not in STEPS_METHODS:
        raise DlaError(f"--steps: applies to --method {' and '.join(STEPS_METHODS)}, not {method}"
                       + (" (one step)" if method == "fgsm" else " (its attacks keep their own budgets)"))
    if c is not None and method != "cw":
        raise DlaError(f"--c: applies to --method cw only, not {method}")
    if epsilons is not None:
        if not epsilons or any(not math.isfinite(e) or e < 0 for e in epsilons):
            raise DlaError(f"--eps: every value must be a finite number >= 0, got {list(epsilons)}")
        if method != "cw" and any(e > 1 for e in epsilons):
            raise DlaError(f"--eps: every L-infinity epsilon must be in [0, 1] (pixel units), got {list(epsilons)}")
    if steps is not None and steps < 1:
        raise DlaError(f"--steps: must be >= 1, got {steps}")
    if n < 1:
        raise DlaError(f"--n: must be >= 1, got {n}")
    if target is not None and method not in TARGETED_METHODS:
        raise DlaError(f"--target: applies to --method {' and '.join(TARGETED_METHODS)} (the targeted attacks), "
                       f"not {method}")
    cs = c_values(c)
    if not cs or any(not (math.isfinite(v) and v > 0) for v in cs):
        raise DlaError(f"--c: every value must be a finite number > 0, got {list(cs)}")


TARGETED_COLUMNS = (*COLUMNS, ("target success (%)", "success", "pct"))


def run_attack(run: RunDir, method: str, epsilons: Sequence[float] | None, steps: int | None, n: int,
               data_root: Path, target: int | str | None = None, c: float | Sequence[float] | None = None) -> dict[str, Any]:
    """Attack `n` test images of an image-classifier run at each eps; write RUN/attack/ atomically.

    With `target` (a class index, "random" or "least-likely") the attack is targeted; images whose
    true class is the target are left out, and the table adds the success rate. `epsilons` and
    `steps` None take the method's defaults (`default_epsilons`, DEFAULT_STEPS)."""
    from dla.analysis.adversarial import GALLERY, accuracy_under_attack, choose_targets, cw_rows, plot_gallery
    from dla.build import input_shape
    from dla.data.batches import to_unit_float
    from dla.data.ood import sample
    from dla.build import class_names, load_data, load_run_model
    from dla.report.plots import plot_xy
    from dla.report.tables import markdown_table

    check_attack_args(method, epsilons, steps, n, target, c)
    cs = c_values(c)
    require_command(load_run_config(run), "dla attack", run.path)
    model, cfg = load_run_model(run)
    epsilons = default_epsilons(method, input_shape(cfg)[0]) if epsilons is None else list(epsilons)
    steps = DEFAULT_STEPS.get(method, 10) if steps is None else steps
    classes = class_names(cfg)
    if method == "autoattack" and len(classes) < 4:
        raise DlaError(f"--method autoattack: APGD-T's targeted DLR loss needs at least 4 classes; {run.path} has "
                       f"{len(classes)} (use pgd)")
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
    kept: dict = {}  # the gallery's adversarial images, made once with the table's
    if method == "cw":
        rows, median_l2 = cw_rows(model, x, y, epsilons, steps, cs, keep=kept)
        found = "none succeeded" if math.isnan(median_l2) else f"median L2 of successful perturbations {median_l2:.3f}"
        each = "" if len(cs) == 1 else ", per image the smallest successful perturbation over them"
        columns, what = CW_COLUMNS, f"cw (L2, c={','.join(f'{v:g}' for v in cs)}{each}, {steps} steps; {found})"
    else:
        rows = accuracy_under_attack(model, x, y, method, epsilons, steps, targets=targets,
                                     batch_size=100 if method == "autoattack" else 256, keep=kept)
        columns = ROBUST_COLUMNS if method == "autoattack" else COLUMNS if targets is None else TARGETED_COLUMNS
        what = method if method != "autoattack" else (
            "AutoAttack (standard: APGD-CE, APGD-T, FAB-T, Square, each on the images the ones before it left "
            "correct; the 'after' columns are the accuracy each leaves)")
    aim = "" if target is None else f", targeted ({'class ' + classes[target] if isinstance(target, int) else target})"
    header = f"{what}{aim} on {len(y)} {data.test_source} test images; run {run.path}\n\n"
    table = markdown_table(rows, columns)
    name = method if target is None else f"{method}_target-{target}"
    out = run.path / "attack"
    with atomic_dir(out) as tmp:
        (tmp / f"{name}.md").write_text(header + table)
        xkey, xlabel = ("eps", "L2 radius") if method == "cw" else ("eps_255", "eps (x 1/255)")
        series = {"accuracy": [(r[xkey], 100 * r["acc"]) for r in rows]}
        if targets is not None:
            series["target success"] = [(r[xkey], 100 * r["success"]) for r in rows]
        plot_xy(series if targets is not None else {method: series["accuracy"]}, tmp / f"{name}_accuracy.png",
                xlabel=xlabel, ylabel="test accuracy (%)" if targets is None else "%")
        plot_gallery(model, x[:GALLERY], y[:GALLERY], classes, method, epsilons, tmp / f"{name}_gallery.png", steps,
                     None if targets is None else targets[:GALLERY], c=cs[0], adversarials=kept)
        label = {"autoattack": "AutoAttack", "cw": "CW"}.get(method, method.upper()) + aim.replace(",", "")
        curve = {"plot": "accuracy-vs-l2", "title": "Accuracy under CW (L2)", "x": "L2 radius"} if method == "cw" else \
            {"plot": "accuracy-vs-eps", "title": "Accuracy under attack", "x": "ε (× 1/255)"}
        write_manifest(tmp, "attack", "Adversarial attacks", over=out,
                       figures=[{"file": f"{name}_accuracy.png", "caption": f"{label} accuracy against {curve['x']}"},
                                {"file": f"{name}_gallery.png", "caption": f"{label} gallery"}],
                       tables=[{"file": f"{name}.md"}],
                       series=[{**curve, "y": "test accuracy (%)", "name": label, "points": series["accuracy"]}])
    return {"rows": rows, "header": header, "table": table, "out": out}
