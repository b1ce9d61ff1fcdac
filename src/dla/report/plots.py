"""Matplotlib figures (Agg backend, PNG files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_run_curves(history: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Train and validation loss and accuracy per epoch of one run."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    epochs = [r["epoch"] for r in history]
    for ax, metric in zip(axes, ("loss", "acc")):
        for split, style in (("train", "--"), ("val", "-")):
            ax.plot(epochs, [r[f"{split}_{metric}"] for r in history], style, marker=".", label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_overlaid(histories: dict[str, list[dict[str, Any]]], path: Path, metrics=("val_acc", "val_loss")) -> Path:
    """One panel per metric, one line per run."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for name, history in histories.items():
            ax.plot([r["epoch"] for r in history], [r[metric] for r in history], label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric.replace("_", " "))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize="small")
    return save_figure(fig, path)


def plot_xy(series: dict[str, list[tuple[float, float]]], path: Path, xlabel: str, ylabel: str) -> Path:
    """One line with markers per series, e.g. test accuracy against depth, plain vs residual."""
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


def save_figure(fig: Any, path: Path) -> Path:
    """Lay out, write as PNG and close."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
