"""`dla ood RUN`: every detector against every OOD set for a trained run, and the ODIN grid.

Outputs go to RUN/ood/: table.md and metrics.json (one row per detector x OOD set), and per OOD
set hist_<set>.png (ID vs OOD scores) and roc_pr_<set>.png. With the grid: odin_grid.md,
odin_heatmap.png and odin_auroc_vs_eps.png. Everything is written into a temporary folder that
replaces RUN/ood/ only when the command succeeds, so a failure leaves the run as it was.
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
from dla.config import load_run_config, require_run_kind
from dla.data.batches import to_unit_float
from dla.data.ood import (
    ONLINE_ONLY,
    OOD_SETS,
    check_user_set,
    is_user_set,
    ood_images,
    sample,
    user_images,
    user_set_label,
)
from dla.data.vision import drop_classes, get_spec, load_arrays
from dla.errors import DlaError
from dla.io import atomic_dir
from dla.report.plots import plot_heatmap, plot_roc_pr, plot_score_histograms, plt, save_figure
from dla.report.tables import markdown_table
from dla.rundir import RunDir

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
    """Scores of one detector; `fitted` holds the detectors fitted on training images (ood.FITTED_DETECTORS)."""
    if name == "msp":
        return ood.msp(ood.logits_of(model, x))
    if name == "maxlogit":
        return ood.max_logit(ood.logits_of(model, x))
    if name == "energy":
        return ood.energy(ood.logits_of(model, x))
    if name == "odin":
        return ood.odin(model, x, odin_t, odin_eps)
    if name in fitted:
        return fitted[name].scores(model, x)
    raise DlaError(f"unknown detector {name!r}; valid: {', '.join(ood.DETECTORS)}")


FIT_IMAGES = 10000  # training images the feature-based detectors are fitted on


def fit_detectors(model, data, detectors: list[str], seed: int) -> dict:
    """Mahalanobis, KNN, ReAct, ViM, ASH and GradNorm, fitted on the same training sample."""
    names = [d for d in detectors if d in ood.FITTED_DETECTORS]
    if not names:
        return {}
    fit_set = sample(data.train, FIT_IMAGES, seed)
    x_fit = to_unit_float(fit_set.x)
    return {d: ood.fit_detector(d, model, x_fit, fit_set.y) for d in names}


# OpenOOD's split: near OOD shares the training images' look (held-out classes of the same data, CIFAR-100 for
# CIFAR-10), far OOD does not (another data set, noise). Sets marked online-only are skipped when offline.
GROUPS = {
    "cifar10": {"near": ("heldout", "cifar100"), "far": ("mnist", "noise-uniform", "noise-gaussian", "svhn")},
    "fashion-mnist": {"near": ("heldout",), "far": ("mnist", "noise-uniform", "noise-gaussian")},
    "mnist": {"near": ("heldout",), "far": ("fashion-mnist", "noise-uniform", "noise-gaussian")},
}


def expand_groups(cfg, entries: list[str]) -> list[tuple[str, str | None]]:
    """--ood entries with `near` and `far` replaced by their sets for the run's data: (set, group) pairs.
    `heldout` joins `near` only for a run trained on a subset of classes."""
    out: list[tuple[str, str | None]] = []
    for entry in entries:
        if entry not in ("near", "far"):
            out.append((entry, None))
            continue
        groups = GROUPS.get(cfg.data.name)
        if groups is None:
            raise DlaError(f"--ood {entry}: no near/far split for {cfg.data.name}; name the sets instead")
        sets = [s for s in groups[entry] if s != "heldout" or cfg.data.classes]
        offline = [s for s in sets if s not in ONLINE_ONLY]
        if not sets or (not offline and not cfg.data.download):
            raise DlaError(f"--ood {entry}: for {cfg.data.name}, offline near OOD is the held-out classes of a run "
                           f"trained with data.classes=[...] (e.g. [0,1,2,3,4,5])")
        out.extend((s, entry) for s in sets)
    return out


def check_ood_args(run: RunDir, ood_sets: list[str], n: int, odin_t: float = 1.0, odin_eps: float = 0.0) -> None:
    """Everything checkable before a model loads: the run's kind, the set names and the numbers."""
    cfg = load_run_config(run)
    require_run_kind(cfg, "image-classifier", "dla ood", run.path)
    check_set_names(cfg, ood_sets)
    if n < 1:
        raise DlaError(f"--n: must be >= 1, got {n}")
    if not (math.isfinite(odin_t) and odin_t > 0):
        raise DlaError(f"--odin-t: must be a finite number > 0, got {odin_t}")
    if not (math.isfinite(odin_eps) and odin_eps >= 0):
        raise DlaError(f"--odin-eps: must be a finite number >= 0, got {odin_eps}")


HELDOUT_NEEDS_CLASSES = "heldout needs a run trained with data.classes=[...] (e.g. [0,1,2,3,4,5])"


def default_ood_set(cfg) -> str:
    """`dla ood`'s set when --ood is not given: MNIST, or Fashion-MNIST for a run trained on MNIST."""
    return "fashion-mnist" if cfg.data.name == "mnist" else "mnist"


def check_set_names(cfg, ood_sets: list[str], option: str = "--ood") -> None:
    """Every OOD set name (or group, or user folder / .npz) valid for this run's config: known, not the
    run's own data set (its test images are in-distribution: scoring them as OOD measures nothing, an
    AUROC near 0.5 by construction), and each set once."""
    if "heldout" in ood_sets and not cfg.data.classes:
        raise DlaError(f"{option} {HELDOUT_NEEDS_CLASSES}")
    valid = ", ".join((*OOD_SETS, "heldout", "near", "far"))
    if not ood_sets:
        raise DlaError(f"{option}: give at least one OOD set; valid: {valid}")
    unknown = [s for s in ood_sets if s not in (*OOD_SETS, "heldout", "near", "far") and not is_user_set(s)]
    if unknown:
        raise DlaError(f"{option}: unknown OOD set {unknown[0]!r}; valid: {valid}, or a folder of images or an .npz file")
    if cfg.data.name in ood_sets:
        held = "heldout (the classes it never saw)" if cfg.data.classes else "e.g. " + default_ood_set(cfg)
        raise DlaError(f"{option} {cfg.data.name}: the run was trained on {cfg.data.name}, so its images are "
                       f"in-distribution, not OOD; choose another set: {held}")
    labels = [user_set_label(name) for name, _ in expand_groups(cfg, ood_sets)]
    twice = next((label for label in labels if labels.count(label) > 1), None)
    if twice:
        raise DlaError(f"{option}: the OOD set {twice} comes twice (named again, in a group, or two user sets of "
                       f"that name); give each once")
    for s in ood_sets:
        if is_user_set(s):
            check_user_set(s)


def ood_set_images(name: str, cfg, data_root: Path, n: int, seed: int) -> torch.Tensor:
    """OOD images for a run: a named set adapted to the run's input shape, or its held-out classes."""
    if name == "heldout":
        if not cfg.data.classes:
            raise DlaError(f"--ood {HELDOUT_NEEDS_CLASSES}")
        _, test, _ = load_arrays(cfg.data.name, data_root, cfg.data.download)
        return to_unit_float(sample(drop_classes(test, cfg.data.classes), n, seed).x)
    if is_user_set(name):
        return user_images(name, get_spec(cfg.data.name).shape, n, seed)
    return ood_images(name, get_spec(cfg.data.name).shape, data_root, n, seed, cfg.data.download)


def load_sets(cfg, ood_sets: list[str], data_root: Path, n: int, seed: int) -> list[tuple[str, str | None, torch.Tensor]]:
    """(set, group, images) of every --ood entry, groups expanded: all of them read before the first is scored,
    so a damaged or missing set fails before any work. A group none of whose sets can be had is an error."""
    loaded, skipped = [], {}
    for name, group in expand_groups(cfg, ood_sets):
        x = grouped_set_images(name, group, cfg, data_root, n, seed)
        if x is None:
            skipped.setdefault(group, []).append(name)
        else:
            loaded.append((name, group, x))
    for group, names in skipped.items():
        if not any(g == group for _, g, _ in loaded):
            raise DlaError(f"--ood {group}: none of its sets for {cfg.data.name} could be had ({', '.join(names)}: "
                           f"not on disk, and no network); offline, use a run trained with data.classes=[...] and "
                           f"--ood heldout, or name sets that are on disk")
    return loaded


def grouped_set_images(name: str, group: str | None, cfg, data_root: Path, n: int, seed: int) -> torch.Tensor | None:
    """`ood_set_images`, except that an online-only set that came from a group (near, far) and cannot be
    fetched is skipped with a line (None); named on its own, it fails as usual."""
    try:
        return ood_set_images(name, cfg, data_root, n, seed)
    except DlaError as exc:
        if group is None or name not in ONLINE_ONLY:
            raise
        print(f"{name}: skipped from the {group} group ({str(exc).split(';')[0]})", flush=True)
        return None


def run_ood(
    run: RunDir,
    ood_sets: list[str],
    detectors: list[str],
    data_root: Path,
    n: int = 2000,
    odin_t: float = 1000.0,
    odin_eps: float = 0.0014,
    seed: int = 0,
) -> list[dict]:
    """Score ID test images and each OOD set with each detector; write the table and plots."""
    unknown = [d for d in detectors if d not in ood.DETECTORS]
    if unknown or not detectors:
        raise DlaError(f"--detectors: unknown detector {unknown[0] if unknown else ''!r}; valid: {', '.join(ood.DETECTORS)}")
    if len(set(detectors)) < len(detectors):
        raise DlaError(f"--detectors: {next(d for d in detectors if detectors.count(d) > 1)} is named twice")
    check_ood_args(run, ood_sets, n, odin_t, odin_eps)
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


def run_odin_grids(run: RunDir, ood_sets: list[str], data_root: Path, n: int = 1000, seed: int = 0) -> list[dict]:
    """`run_odin_grid` for each set, every set read before the first grid runs."""
    check_ood_args(run, ood_sets, n)
    if {"near", "far"} & set(ood_sets):
        raise DlaError("--odin-grid: name the OOD sets (e.g. --ood heldout), not the groups near/far")
    sets = load_sets(load_run_config(run), ood_sets, data_root, n, seed)
    return [run_odin_grid(run, name, data_root, n, seed=seed, x_ood=x) for name, _, x in sets]


def run_odin_grid(
    run: RunDir,
    ood_set: str,
    data_root: Path,
    n: int = 1000,
    temperatures=ODIN_TEMPERATURES,
    epsilons=ODIN_EPSILONS,
    seed: int = 0,
    x_ood: torch.Tensor | None = None,
) -> dict:
    """The T x eps grid; the best cell is chosen on a validation half of ID and OOD, reported on the test half.
    `x_ood`: the set's images, when already read."""
    check_ood_args(run, [ood_set], n)
    if n < 2:
        raise DlaError(f"--n: the ODIN grid splits the images into two halves: needs >= 2, got {n}")
    with atomic_dir(run.path / "ood") as out:
        result, text = _odin_grid(run, ood_set, data_root, n, temperatures, epsilons, seed, out, x_ood)
    print(text, end="")
    return result


def _odin_grid(run, ood_set, data_root, n, temperatures, epsilons, seed, out, x_ood=None):
    model, cfg = load_run_model(run)
    data = load_data(cfg, data_root)
    x_id = to_unit_float(sample(data.test, n, seed).x)
    x_ood = ood_set_images(ood_set, cfg, data_root, n, seed) if x_ood is None else x_ood
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
    return result, text
