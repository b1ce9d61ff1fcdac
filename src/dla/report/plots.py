"""Matplotlib figures (Agg backend, PNG files)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any


@functools.cache
def pyplot() -> Any:
    """matplotlib.pyplot with the Agg backend, imported on first use rather than with this module:
    it costs about half a second, which every training run would otherwise pay at start-up."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot

    return matplotlib.pyplot


def __getattr__(name: str) -> Any:
    if name == "plt":  # `from dla.report.plots import plt` (inside functions, to stay lazy)
        return pyplot()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def x_axis(history: list[dict[str, Any]]) -> str:
    """Classifiers are plotted per epoch; language models (no accuracy) per optimiser step."""
    return "epoch" if history and "val_acc" in history[0] else "step"


def plot_run_curves(history: list[dict[str, Any]], path: Path, title: str = "", x: str | None = None) -> Path:
    """Train and validation loss and the run's second metric (accuracy, bits per char, ...) per epoch or
    step (`x`; default: per epoch for a classifier, per step otherwise)."""
    plt = pyplot()
    first = history[0]
    others = [k[4:] for k in first if k.startswith("val_") and k != "val_loss"]
    second = next((m for m in ("acc", "bpc") if m in others), others[0] if others else None)
    fig, axes = plt.subplots(1, 2 if second else 1, figsize=(10 if second else 5, 3.8), squeeze=False)
    x = x or x_axis(history)
    xs = [r[x] for r in history]
    for ax, metric in zip(axes[0], ("loss", second)):
        for split, style in (("train", "--"), ("val", "-")):
            if f"{split}_{metric}" in first:
                ax.plot(xs, [r.get(f"{split}_{metric}") for r in history], style, marker=".", label=split)
        ax.set_xlabel(x)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    return save_figure(fig, path)


def ood_series(history: list[dict[str, Any]]) -> dict[tuple[str, str, str], list[tuple[int, float]]]:
    """(set, detector, metric) -> [(epoch, value)] from the `ood_<set>_<detector>_<metric>` keys of OOD tracking."""
    series: dict[tuple[str, str, str], list[tuple[int, float]]] = {}
    for r in history:
        for key, value in r.items():
            if key.startswith("ood_") and key.count("_") >= 3:
                name, detector, metric = key[4:].rsplit("_", 2)
                series.setdefault((name, detector, metric), []).append((r["epoch"], value))
    return series


def plot_ood_curves(history: list[dict[str, Any]], path: Path, title: str = "") -> Path | None:
    """AUROC and FPR@95 of each tracked OOD set and detector against the epoch (None when nothing was tracked)."""
    series = ood_series(history)
    if not series:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    names = sorted({k[0] for k in series})
    colours = {n: f"C{i}" for i, n in enumerate(names)}
    for ax, metric, label in ((axes[0], "auroc", "AUROC (higher: better)"), (axes[1], "fpr95", "FPR@95TPR (lower: better)")):
        for (name, detector, m), points in sorted(series.items()):
            if m == metric:
                ax.plot(*zip(*points), "-" if detector == "energy" else "--", marker="o", color=colours[name],
                        label=f"{name} · {detector}")
        ax.set(xlabel="epoch", ylabel=label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title or "OOD detection during training (solid: energy, dashed: MSP)")
    return save_figure(fig, path)


def plot_overlaid(histories: dict[str, list[dict[str, Any]]], path: Path, metrics=("val_acc", "val_loss")) -> Path:
    """One panel per metric, one line per run (metrics no run has are left out)."""
    plt = pyplot()
    metrics = [m for m in metrics if any(h and m in h[0] for h in histories.values())] or ["val_loss"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for name, history in histories.items():
            if history and metric in history[0]:
                x = x_axis(history)
                ax.plot([r[x] for r in history], [r[metric] for r in history], label=name)
        ax.set_xlabel(x_axis(next(iter(histories.values()))))
        ax.set_ylabel(metric.replace("_", " "))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize="small")
    return save_figure(fig, path)


def plot_xy(series: dict[str, list[tuple[float, float]]], path: Path, xlabel: str, ylabel: str) -> Path:
    """One line with markers per series, e.g. test accuracy against depth, plain vs residual."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, points in series.items():
        xs, ys = zip(*sorted(points))
        ax.plot(xs, ys, marker="o", label=name)
        for x, y in zip(xs, ys):
            ax.annotate(f"{y:.2f}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xticks(sorted({x for points in series.values() for x, _ in points}))
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def show_image(ax: Any, image: Any, heat: Any = None, title: str = "", color: str = "black", fontsize: int = 8) -> None:
    """A (C, H, W) image in [0, 1] on `ax`, grey for one channel, optionally under a [0, 1] heat map (CAM)."""
    img = image.detach().permute(1, 2, 0).float().cpu().numpy()
    ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
    if heat is not None:
        ax.imshow(heat.numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1)
    if title:
        ax.set_title(title, fontsize=fontsize, color=color)
    ax.axis("off")


def save_figure(fig: Any, path: Path) -> Path:
    """Lay out, write as PNG and close."""
    plt = pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_score_histograms(scores: dict[str, tuple[Any, Any]], path: Path, title: str = "") -> Path:
    """One panel per detector, five to a row: ID vs OOD score histograms (higher = more in-distribution),
    over the central 99% of the scores."""
    plt = pyplot()
    cols = min(5, len(scores))
    rows = -(-len(scores) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(scores):]:
        ax.axis("off")
    for ax, (name, (s_id, s_ood)) in zip(axes.flat, scores.items()):
        import numpy as np

        both = np.concatenate([np.asarray(s_id, dtype=float), np.asarray(s_ood, dtype=float)])
        lo, hi = (float(v) for v in np.percentile(both, [0.5, 99.5]))  # a few extreme scores would squash the rest
        bins = [lo + (hi - lo) * i / 50 for i in range(51)] if hi > lo else 10
        # one filled outline per histogram, not a rectangle per bin: a tenth of the drawing time
        ax.hist(s_id, bins=bins, alpha=0.6, density=True, label="ID", histtype="stepfilled")
        ax.hist(s_ood, bins=bins, alpha=0.6, density=True, label="OOD", histtype="stepfilled")
        ax.set_title(name)
        ax.set_xlabel("score")
    axes[0][0].legend()
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_roc_pr(curves: dict[str, tuple[Any, Any]], path: Path, title: str = "") -> Path:
    """ROC and precision-recall curves (ID positive), one line per detector."""
    plt = pyplot()
    from sklearn.metrics import precision_recall_curve, roc_curve

    import numpy as np

    fig, (roc_ax, pr_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for name, (s_id, s_ood) in curves.items():
        labels = np.concatenate([np.ones(len(s_id)), np.zeros(len(s_ood))])
        scores = np.concatenate([np.asarray(s_id), np.asarray(s_ood)])
        fpr, tpr, _ = roc_curve(labels, scores)
        precision, recall, _ = precision_recall_curve(labels, scores)
        roc_ax.plot(fpr, tpr, label=name)
        pr_ax.plot(recall, precision, label=name)
    roc_ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    roc_ax.set(xlabel="false positive rate (OOD kept)", ylabel="true positive rate (ID kept)", title="ROC")
    pr_ax.set(xlabel="recall (ID)", ylabel="precision (ID)", title="precision-recall")
    for ax in (roc_ax, pr_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_heatmap(values: Any, rows: list[str], cols: list[str], path: Path, title: str, xlabel: str, ylabel: str) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1 + 0.8 * len(cols), 1 + 0.6 * len(rows)))
    im = ax.imshow(values, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=45)
    ax.set_yticks(range(len(rows)), rows)
    for i in range(len(rows)):
        for j in range(len(cols)):
            ax.text(j, i, f"{values[i][j]:.3f}", ha="center", va="center", fontsize=7, color="w")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    fig.colorbar(im, ax=ax)
    return save_figure(fig, path)


def plot_confusion(confusion: Any, classes: tuple[str, ...], path: Path, title: str) -> Path:
    """Confusion matrix (rows: true class) with counts, as a PNG."""
    import numpy as np
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.6 + 0.9 * len(classes), 1.2 + 0.8 * len(classes)))
    ConfusionMatrixDisplay(np.asarray(confusion), display_labels=classes).plot(
        ax=ax, colorbar=False, xticks_rotation=45, cmap="Blues", values_format="d")
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def plot_returns(curves: dict[str, list[list[dict[str, Any]]]], path: Path, title: str = "",
                 x: str = "train_episodes") -> Path:
    """Mean evaluation return against `x` (episodes or env steps), one line per label: over one run, the band
    is the std across its evaluation episodes; over several seeds, the mean and std across seeds."""
    import numpy as np

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, histories in curves.items():
        histories = [h for h in histories if h]
        if not histories:
            continue
        longest = max(histories, key=len)
        xs = np.array([r.get(x, r["epoch"]) for r in longest], dtype=float)
        if len(histories) == 1:
            mean = np.array([r["val_return"] for r in longest])
            std = np.array([r.get("val_return_std", 0.0) for r in longest])
            what = f"{label}"
        else:  # a run that ended early (stopped when solved) keeps its last evaluation from then on
            ys = np.array([[h[min(i, len(h) - 1)]["val_return"] for i in range(len(longest))] for h in histories])
            mean, std = ys.mean(0), ys.std(0)
            what = f"{label} ({len(histories)} seeds)"
        ax.plot(xs, mean, label=what)
        ax.fill_between(xs, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel(x.removeprefix("train_").replace("_", " "))
    ax.set_ylabel("mean evaluation return")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def plot_bars(groups: dict[str, dict[str, float]], path: Path, title: str = "", ylabel: str = "",
              line: tuple[str, float] | None = None) -> Path:
    """Grouped bars: one group per metric (the inner keys), one bar per system (the outer keys), values on top;
    `line`: (label, value) drawn across, e.g. chance."""
    import numpy as np

    plt = pyplot()
    systems = list(groups)
    metrics = list(dict.fromkeys(m for values in groups.values() for m in values))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 + 0.65 * len(metrics) * max(1, len(systems))), 3.8))
    width = 0.8 / max(1, len(systems))
    for i, system in enumerate(systems):
        xs = np.arange(len(metrics)) + (i - (len(systems) - 1) / 2) * width
        values = [groups[system].get(m, np.nan) for m in metrics]
        bars = ax.bar(xs, values, width, label=system)
        ax.bar_label(bars, labels=[f"{v:.3f}" for v in values], fontsize=7, padding=1)
    if line:
        ax.axhline(line[1], color="grey", linestyle="--", linewidth=1, label=line[0])
    ax.set_xticks(np.arange(len(metrics)), metrics)
    ax.set_ylim(0, 1.18)  # room above the bars for the legend
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="upper center", ncol=len(systems) + bool(line), frameon=False)
    return save_figure(fig, path)


def plot_routing(history: list[dict[str, Any]], layers: list[int], n_experts: int, path: Path, title: str = "") -> Path:
    """Mixture-of-Experts routing over training, one panel per MoE layer: each expert's share of the token
    assignments at every evaluation (uniform: 1/E, dashed), with the max/mean load in the panel's title."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(layers), figsize=(4.2 * len(layers), 3.4), squeeze=False)
    steps = [r["step"] for r in history]
    for ax, layer in zip(axes[0], layers):
        for e in range(n_experts):
            ax.plot(steps, [r.get(f"val_moe{layer}_share{e}") for r in history], linewidth=1.2, label=f"expert {e}")
        ax.axhline(1 / n_experts, color="grey", linestyle="--", linewidth=1)
        last = history[-1] if history else {}
        ax.set_title(f"block {layer + 1}: max/mean load {last.get(f'val_moe{layer}_max_load', float('nan')):.2f}, "
                     f"dead {last.get(f'val_moe{layer}_dead', '-')}", fontsize=8)
        ax.set_xlabel("step")
        ax.set_ylabel("share of assignments")
    axes[0][-1].legend(fontsize=6, ncol=2)
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)
