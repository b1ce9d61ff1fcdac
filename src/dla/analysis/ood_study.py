"""`dla ood RUN`: every detector against every OOD set for a trained run, and the ODIN grid.

Outputs go to RUN/ood/: table.md and metrics.json (one row per detector x OOD set), and per OOD
set hist_<set>.png (ID vs OOD scores) and roc_pr_<set>.png. With the grid: odin_grid.md,
odin_heatmap.png and odin_auroc_vs_eps.png; manifest.json describes them (`dla.manifest`). Everything
is written into a temporary folder that replaces RUN/ood/ only when the command succeeds, so a
failure leaves the run as it was.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import torch

from dla.analysis import ood
from dla.build import load_data, load_run_model
from dla.config import load_run_config
from dla.kind import require_command
from dla.data.batches import to_unit_float
from dla.data.ood import (
    check_set_names,
    load_sets,
    default_ood_set,
    sample,
    user_set_label,
)
from dla.errors import DlaError
from dla.io import atomic_dir
from dla.manifest import write_manifest
from dla.report.plots import plot_heatmap, plot_roc_pr, plot_score_histograms, plt, save_figure
from dla.report.tables import markdown_table
from dla.rundir import RunDir

TITLE = "Out-of-distribution detection"
ODIN_TEMPERATURES = (1, 10, 100, 1000)
ODIN_EPSILONS = (0, 0.0005, 0.001, 0.0014, 0.002, 0.0024, 0.005, 0.01, 0.02, 0.05)
OOD_COLUMNS = (
    ("OOD set", "ood", "str"),
    ("group", "group", "str"),
    ("detector", "detector", "str"),
    ("AUROC", "auroc", "float"),
    ("AUPR-In", "aupr_in", "float"),
    ("AUPR-Out", "aupr_out", "float"),
    ("FPR@95TPR", "fpr95", "float"),
)


def detector_scores(name: str, model, x: torch.Tensor, fitted: dict, odin_t: float, odin_eps: float):
    """Scores of one registered detector (`ood.DETECTORS`); `fitted` holds those fitted on training images."""
    if name not in ood.DETECTORS:
        raise DlaError(f"unknown detector {name!r}; valid: {', '.join(ood.DETECTORS)}")
    return ood.DETECTORS[name](model, x, fitted, odin_t, odin_eps)


FIT_IMAGES = 10000  # training images the feature-based detectors are fitted on


def fit_detectors(model, data, detectors: list[str], seed: int) -> dict:
    """Mahalanobis, KNN, ReAct, ViM, ASH and GradNorm, fitted on the same training sample."""
    names = [d for d in detectors if d in ood.FITTED_DETECTORS]
    if not names:
        return {}
    fit_set = sample(data.train, FIT_IMAGES, seed)
    x_fit = to_unit_float(fit_set.x)
    return {d: ood.fit_detector(d, model, x_fit, fit_set.y) for d in names}


def check_ood_args(run: RunDir, ood_sets: list[str] | None, n: int, odin_t: float = 1.0,
                   odin_eps: float = 0.0) -> list[str]:
    """Everything checkable before a model loads: the run's kind, the set names and the numbers. Returns the
    sets (None: the default set for the run's data). The one check of `dla ood`'s arguments: the study makes it."""
    cfg = load_run_config(run)
    require_command(cfg, "dla ood", run.path)
    ood_sets = [default_ood_set(cfg)] if ood_sets is None else ood_sets
    check_set_names(cfg, ood_sets)
    if n < 1:
        raise DlaError(f"--n: must be >= 1, got {n}")
    if not (math.isfinite(odin_t) and odin_t > 0):
        raise DlaError(f"--odin-t: must be a finite number > 0, got {odin_t}")
    if not (math.isfinite(odin_eps) and odin_eps >= 0):
        raise DlaError(f"--odin-eps: must be a finite number >= 0, got {odin_eps}")
    return ood_sets


def run_ood(
    run: RunDir,
    ood_sets: list[str] | None,
    detectors: list[str] | None,
    data_root: Path,
    n: int = 2000,
    odin_t: float = 1000.0,
    odin_eps: float = 0.0014,
    seed: int = 0,
) -> list[dict]:
    """Score ID test images and each OOD set (None: the default one) with each detector (None: all); write
    the table and plots."""
    detectors = list(ood.DETECTORS) if detectors is None else detectors
    unknown = [d for d in detectors if d not in ood.DETECTORS]
    if unknown or not detectors:
        raise DlaError(f"--detectors: unknown detector {unknown[0] if unknown else ''!r}; valid: {', '.join(ood.DETECTORS)}")
    if len(set(detectors)) < len(detectors):
        raise DlaError(f"--detectors: {next(d for d in detectors if detectors.count(d) > 1)} is named twice")
    ood_sets = check_ood_args(run, ood_sets, n, odin_t, odin_eps)
    sets = load_sets(load_run_config(run), ood_sets, data_root, n, seed)
    model, cfg = load_run_model(run)
    data = load_data(cfg, data_root)
    x_id = to_unit_float(sample(data.test, n, seed).x)
    fitted = fit_detectors(model, data, detectors, seed)
    with atomic_dir(run.path / "ood") as out:
        rows = _score_sets(model, data, x_id, fitted, sets, detectors, odin_t, odin_eps, out)
        header = f"ID: {data.test_source} test split ({len(x_id)} images); run {run.path}; higher score = more ID\n\n"
        grouped = any(r.get("group") for r in rows)
        text = header + markdown_table(rows, [c for c in OOD_COLUMNS if grouped or c[1] != "group"])
        summary = group_means(rows, detectors)
        if summary:
            text += "\nMean AUROC per group (as OpenOOD reports; sets in brackets):\n\n" + summary
        (out / "table.md").write_text(text)
        (out / "metrics.json").write_text(json.dumps(rows, indent=2) + "\n")
        sets = list(dict.fromkeys(r["ood"] for r in rows))
        write_manifest(out, "ood", TITLE, over=run.path / "ood", tables=[{"file": "table.md"}], metrics="metrics.json",
                       figures=[f for n in sets for f in (
                           {"file": f"hist_{n}.png", "caption": f"ID vs OOD score histograms: {n}"},
                           {"file": f"roc_pr_{n}.png", "caption": f"ROC and precision-recall: {n}"})])
    print(text, end="")
    return rows


def group_means(rows: list[dict], detectors: list[str]) -> str:
    """A detector x group table of mean AUROC (and mean FPR@95) over each group's sets; '' without groups."""
    groups = list(dict.fromkeys(r["group"] for r in rows if r.get("group")))
    if not groups:
        return ""
    table = []
    for d in detectors:
        row = {"detector": d}
        for g in groups:
            picked = [r for r in rows if r.get("group") == g and r["detector"] == d]
            row[g] = float(np.mean([r["auroc"] for r in picked]))
            row[f"{g}_fpr95"] = float(np.mean([r["fpr95"] for r in picked]))
        table.append(row)
    sets = {g: ", ".join(dict.fromkeys(r["ood"] for r in rows if r.get("group") == g)) for g in groups}
    columns = [("detector", "detector", "str")]
    for g in groups:
        columns += [(f"{g} AUROC ({sets[g]})", g, "float"), (f"{g} FPR@95", f"{g}_fpr95", "float")]
    return markdown_table(table, columns)


def _score_sets(model, data, x_id, fitted, sets, detectors, odin_t, odin_eps, out):
    id_scores = {d: detector_scores(d, model, x_id, fitted, odin_t, odin_eps) for d in detectors}
    rows = []
    for path, group, x_ood in sets:
        name = user_set_label(path)
        pairs = {}
        for d in detectors:
            s_ood = detector_scores(d, model, x_ood, fitted, odin_t, odin_eps)
            pairs[d] = (id_scores[d].numpy(), s_ood.numpy())
            rows.append({"id": data.source, "ood": name, "detector": d, **({"group": group} if group else {}),
                         **ood.ood_metrics(*pairs[d])})
            print(f"{name:15} {d:12} AUROC {rows[-1]['auroc']:.4f}  FPR@95 {rows[-1]['fpr95']:.4f}", flush=True)
        title = f"ID {data.source} vs OOD {name}"
        plot_score_histograms(pairs, out / f"hist_{name}.png", title)
        plot_roc_pr(pairs, out / f"roc_pr_{name}.png", title)
    return rows


def run_odin_grids(run: RunDir, ood_sets: list[str] | None, data_root: Path, n: int = 1000, seed: int = 0,
                   temperatures=ODIN_TEMPERATURES, epsilons=ODIN_EPSILONS) -> list[dict]:
    """The ODIN grid (`run_odin_grid`) for each set, every set checked and read before the first grid runs."""
    ood_sets = check_ood_args(run, ood_sets, n)
    if {"near", "far"} & set(ood_sets):
        raise DlaError("--odin-grid: name the OOD sets (e.g. --ood heldout), not the groups near/far")
    if n < 2:
        raise DlaError(f"--n: the ODIN grid splits the images into two halves: needs >= 2, got {n}")
    sets = load_sets(load_run_config(run), ood_sets, data_root, n, seed)
    return [_write_odin_grid(run, name, data_root, n, temperatures, epsilons, seed, x) for name, _, x in sets]


def run_odin_grid(run: RunDir, ood_set: str, data_root: Path, n: int = 1000, temperatures=ODIN_TEMPERATURES,
                  epsilons=ODIN_EPSILONS, seed: int = 0) -> dict:
    """The T x eps grid of one set; the best cell is chosen on a validation half of ID and OOD, reported on the
    test half."""
    return run_odin_grids(run, [ood_set], data_root, n, seed, temperatures, epsilons)[0]


def _write_odin_grid(run, ood_set, data_root, n, temperatures, epsilons, seed, x_ood) -> dict:
    with atomic_dir(run.path / "ood") as out:
        result, text = _odin_grid(run, ood_set, data_root, n, temperatures, epsilons, seed, out, x_ood)
    print(text, end="")
    return result


def _odin_grid(run, ood_set, data_root, n, temperatures, epsilons, seed, out, x_ood):
    model, cfg = load_run_model(run)
    data = load_data(cfg, data_root)
    x_id = to_unit_float(sample(data.test, n, seed).x)
    grid = ood.odin_grid(model, torch.cat([x_id, x_ood]), temperatures, epsilons)
    halves = {"val": slice(0, None, 2), "test": slice(1, None, 2)}  # alternate images, so both halves mix alike
    metrics = {}  # (T, eps) -> half -> every metric
    for key, scores in grid.items():
        s_id, s_ood = scores[: len(x_id)].numpy(), scores[len(x_id) :].numpy()
        metrics[key] = {h: ood.ood_metrics(s_id[sl], s_ood[sl]) for h, sl in halves.items()}
    auroc = {k: {h: m["auroc"] for h, m in v.items()} for k, v in metrics.items()}
    best = max(auroc, key=lambda k: auroc[k]["val"])
    oracle = max(auroc, key=lambda k: auroc[k]["test"])
    rows = [f"T={t:g}" for t in temperatures]
    cols = [f"{e:g}" for e in epsilons]
    val = np.array([[auroc[(t, e)]["val"] for e in epsilons] for t in temperatures])
    test = np.array([[auroc[(t, e)]["test"] for e in epsilons] for t in temperatures])
    plot_heatmap(val, rows, cols, out / "odin_heatmap.png", f"ODIN AUROC (validation half), OOD {ood_set}", "epsilon", "T")
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, t in enumerate(temperatures):
        ax.plot(range(len(epsilons)), test[i], marker="o", label=f"T={t:g}")
    ax.set_xticks(range(len(epsilons)), cols, rotation=45)
    ax.set(xlabel="epsilon", ylabel="AUROC (test half)", title=f"ODIN, ID {data.test_source} vs OOD {ood_set}")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, out / "odin_auroc_vs_eps.png")
    base = auroc[(temperatures[0], epsilons[0])]
    result = {
        "ood": ood_set,
        "baseline": {"T": temperatures[0], "eps": epsilons[0], **base},
        "best_on_val": {"T": best[0], "eps": best[1], **auroc[best]},
        "best_on_test_oracle": {"T": oracle[0], "eps": oracle[1], **auroc[oracle]},
        "cells": [{"T": t, "eps": e, **metrics[(t, e)]} for t in temperatures for e in epsilons],
    }
    names = {"aupr_in": "AUPR-In", "aupr_out": "AUPR-Out", "fpr95": "FPR@95TPR"}
    other_tables = []
    for key, label in names.items():
        other_tables += [f"\n{label} on the validation half:\n", markdown_table(
            [{"T": r, **{c: metrics[(t, e)]["val"][key] for c, e in zip(cols, epsilons)}} for r, t in zip(rows, temperatures)],
            [("T", "T", "str"), *((c, c, "float") for c in cols)])]
    chosen = metrics[best]["test"]
    lines = [
        f"# ODIN grid: ID {data.test_source} vs OOD {ood_set} ({n} + {n} images, split into validation/test halves)\n",
        "AUROC on the validation half (rows T, columns epsilon):\n",
        markdown_table(
            [{"T": r, **{c: float(val[i][j]) for j, c in enumerate(cols)}} for i, r in enumerate(rows)],
            [("T", "T", "str"), *((c, c, "float") for c in cols)],
        ),
        f"\nBaseline T={temperatures[0]:g}, eps={epsilons[0]:g}: test AUROC {base['test']:.4f}.",
        f"Best on validation: T={best[0]:g}, eps={best[1]:g} (val {auroc[best]['val']:.4f}); "
        f"its test AUROC {auroc[best]['test']:.4f}.",
        f"Picking on the test half instead (the original's protocol) would give T={oracle[0]:g}, eps={oracle[1]:g}, "
        f"test AUROC {auroc[oracle]['test']:.4f}.",
        f"The chosen cell on the test half: AUROC {chosen['auroc']:.4f}, AUPR-In {chosen['aupr_in']:.4f}, "
        f"AUPR-Out {chosen['aupr_out']:.4f}, FPR@95TPR {chosen['fpr95']:.4f}.",
        *other_tables,
    ]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).rstrip("\n") + "\n"  # one blank line between blocks
    (out / "odin_grid.md").write_text(text)
    (out / "odin_grid.json").write_text(json.dumps(result, indent=2) + "\n")
    write_manifest(out, "ood", TITLE, over=run.path / "ood", tables=[{"file": "odin_grid.md"}], figures=[
        {"file": "odin_heatmap.png", "caption": f"ODIN AUROC over T × ε (validation half): {ood_set}"},
        {"file": "odin_auroc_vs_eps.png", "caption": f"ODIN AUROC against ε (test half): {ood_set}"}])
    return result, text
