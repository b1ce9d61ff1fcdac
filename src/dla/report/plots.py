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
    return _save(fig, path)


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
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
