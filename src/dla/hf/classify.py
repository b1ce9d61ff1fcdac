"""What the fine-tuned text classifier (Lab 2.3) needs beyond the shared engine: classification metrics
on numpy logits (the frozen-feature baseline), the confusion-matrix plot and text, `save_pretrained`
into a run, and `dla predict` on texts.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch



def metrics(labels: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """Cross-entropy, accuracy and macro-F1 (scikit-learn) of logits against labels."""
    from sklearn.metrics import accuracy_score, f1_score

    logp = torch.from_numpy(logits).float().log_softmax(1)
    loss = float(torch.nn.functional.nll_loss(logp, torch.from_numpy(labels)).item())
    pred = logits.argmax(1)
    return {"loss": loss, "acc": float(accuracy_score(labels, pred)),
            "f1": float(f1_score(labels, pred, average="macro", labels=np.arange(logits.shape[1]), zero_division=0))}


def plot_confusion(confusion: np.ndarray, classes: tuple[str, ...], path: Path, title: str) -> Path:
    """Confusion matrix (rows: true class) with counts, as a PNG."""
    from sklearn.metrics import ConfusionMatrixDisplay

    from dla.report.plots import plt, save_figure

    fig, ax = plt.subplots(figsize=(1.6 + 0.9 * len(classes), 1.2 + 0.8 * len(classes)))
    ConfusionMatrixDisplay(np.asarray(confusion), display_labels=classes).plot(
        ax=ax, colorbar=False, xticks_rotation=45, cmap="Blues", values_format="d")
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def confusion_text(confusion: np.ndarray, classes: tuple[str, ...]) -> str:
    width = max(8, *(len(c) for c in classes))
    head = " " * width + " " + " ".join(f"{c[:8]:>8}" for c in classes)
    rows = [f"{c:>{width}} " + " ".join(f"{int(n):8d}" for n in row) for c, row in zip(classes, confusion)]
    return "\n".join(["rows: true class, columns: predicted", head, *rows])


def save_pretrained(model: Any, tokenizer: Any, folder: Path) -> None:
    """`save_pretrained` (safetensors) of model and tokenizer into a temporary folder, then swapped in."""
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    old = folder.with_name(f".{folder.name}.old")
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
