"""Lab 1.3: gradient flow. A callback that records per-layer gradient and weight norms during training,
and the plots and summary that `dla gradients` draws from them.

Layers are the modules with a weight matrix or kernel (Conv and Linear), in input-to-output order.
Gradients are read after clipping, i.e. the ones the optimiser used.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dla.errors import DlaError
from dla.report.plots import pyplot, save_figure
from dla.rundir import RunDir
from dla.train.callbacks import Callback

LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Linear)


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every Conv/Linear layer, in registration (input-to-output) order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LAYER_TYPES)]


def layer_norms(model: nn.Module) -> dict[str, dict[str, float]]:
    """Gradient L2 norm, weight L2 norm and their ratio for each layer's weight."""
    layers = [(n, m) for n, m in weight_layers(model) if m.weight.grad is not None]
    if not layers:
        return {}
    grads = torch.stack(torch._foreach_norm([m.weight.grad.detach().float() for _, m in layers]))
    weights = torch.stack(torch._foreach_norm([m.weight.detach().float() for _, m in layers]))
    pairs = torch.stack([grads, weights]).tolist()  # one device sync
    return {
        name: {"kind": type(m).__name__, "grad": g, "weight": w, "ratio": g / w if w else float("inf")}
        for (name, m), g, w in zip(layers, pairs[0], pairs[1])
    }


class GradientStats(Callback):
    """Every `every` steps, append one JSON line of per-layer norms to RUN/gradients.jsonl."""

    def __init__(self, every: int):
        self.every = every
        self.path: Path | None = None
        self.tracker: Any = None
        self.fh = None

    def on_fit_start(self, run: RunDir | None, tracker: Any, model: nn.Module, step: int) -> None:
        if run is None:
            return
        self.path, self.tracker = run.path / "gradients.jsonl", tracker
        if step and self.path.is_file():  # resuming: drop what was logged after the checkpoint
            kept = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= step]
            self.path.write_text("".join(line + "\n" for line in kept))
        self.fh = open(self.path, "a")

    def on_step_end(self, step: int, model: nn.Module) -> None:
        if self.fh is None or step % self.every:
            return
        norms = layer_norms(model)
        self.fh.write(json.dumps({"step": step, "layers": norms}) + "\n")
        self.fh.flush()
        if self.tracker is not None and norms:
            self.tracker.histogram("grad_norm/per_layer", torch.tensor([v["grad"] for v in norms.values()]), step)
            layers = weight_layers(model)
            for tag, (_, module) in (("first", layers[0]), ("last", layers[-1])):
                if module.weight.grad is not None:
                    self.tracker.histogram(f"grad/{tag}_layer", module.weight.grad.detach().float().cpu(), step)

    def on_fit_end(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None


# ---------------------------------------------------------------------------------------------
# Reading and plotting


def read_gradients(run: RunDir) -> list[dict[str, Any]]:
    path = run.path / "gradients.jsonl"
    if not path.is_file():
        raise DlaError(f"{run.path} has no gradients.jsonl; train with train.grad_stats_every=N to record it")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DlaError(f"{path}: damaged (not UTF-8 text at byte {exc.start})") from None
    records = []
    numbered = [(i, line) for i, line in enumerate(lines, 1) if line.strip()]
    for i, line in numbered:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if i == numbered[-1][0]:  # a last line torn by a crash mid-write: the records before it stand
                print(f"note: {path}, line {i}: torn last line skipped", file=sys.stderr)
                break
            raise DlaError(f"{path}, line {i}: damaged JSON line ({exc.msg}); the file is corrupt") from None
        if not isinstance(record, dict) or "step" not in record or "layers" not in record:
            raise DlaError(f"{path}, line {i}: not a gradient record (needs step and layers)")
        records.append(record)
    if not records:
        raise DlaError(f"{path}: no gradient records")
    return records


def first_last(layers: dict[str, dict[str, Any]]) -> tuple[str, str]:
    """The first and last conv layers (the original lab's choice), else the first and last layers."""
    convs = [n for n, v in layers.items() if v["kind"].startswith("Conv")]
    pool = convs if len(convs) >= 2 else list(layers)
    return pool[0], pool[-1]


def total_norm(record: dict[str, Any]) -> float:
    return sum(v["grad"] ** 2 for v in record["layers"].values()) ** 0.5


def summarise(label: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    names = list(records[0]["layers"])
    first, last = first_last(records[0]["layers"])
    f = [r["layers"][first]["grad"] for r in records]
    l_ = [r["layers"][last]["grad"] for r in records]
    return {
        "run": label,
        "layers": len(names),
        "first": first,
        "last": last,
        "first_grad": statistics.median(f),
        "last_grad": statistics.median(l_),
        "first_over_last": statistics.median(a / b for a, b in zip(f, l_) if b),
        "total_grad": statistics.median(total_norm(r) for r in records),
    }


def plot_gradients(runs: dict[str, list[dict[str, Any]]], out: Path) -> list[Path]:
    """(a) grad norm per layer early/middle/late, (b) first vs last layer over steps, (c) total norm over steps."""
    plt = pyplot()
    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), sharey=True)
    for ax, (phase, frac) in zip(axes, (("early", 0.05), ("middle", 0.5), ("late", 0.95))):
        for label, records in runs.items():
            r = records[min(len(records) - 1, int(frac * len(records)))]
            ax.plot([v["grad"] for v in r["layers"].values()], marker=".", label=label)
            ax.set_title(f"{phase} (step {r['step']})")
        ax.set_xlabel("layer index (input -> output)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("gradient L2 norm")
    axes[0].legend(fontsize="small")
    paths = [save_figure(fig, out / "layers.png")]

    fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
    for label, records in runs.items():
        first, last = first_last(records[0]["layers"])
        steps = [r["step"] for r in records]
        axes[0].plot(steps, [r["layers"][first]["grad"] for r in records], label=label)
        axes[1].plot(steps, [r["layers"][last]["grad"] for r in records], label=label)
    for ax, title in zip(axes, ("first layer", "last layer")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("gradient L2 norm")
    axes[0].legend(fontsize="small")
    paths.append(save_figure(fig, out / "first_last.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, records in runs.items():
        ax.plot([r["step"] for r in records], [total_norm(r) for r in records], label=label)
    ax.set_title("total gradient norm (after clipping)")
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    paths.append(save_figure(fig, out / "total.png"))
    return paths


def gradient_report(runs: list[RunDir], out: Path) -> tuple[str, list[Path]]:
    """Plots, a Markdown summary (`out/gradients.md`) and their manifest.json of the gradient flow of `runs`; returns the table and files."""
    from dla.config import load_run_config
    from dla.io import atomic_text
    from dla.manifest import write_manifest
    from dla.report.tables import markdown_table

    records = {}
    for run in runs:
        clip = load_run_config(run).train.clip_grad_norm
        records[run.label + (f" (clip {clip:g})" if clip else "")] = read_gradients(run)
    paths = plot_gradients(records, out)
    rows = [summarise(label, r) for label, r in records.items()]
    columns = (
        ("run", "run", "str"),
        ("layers", "layers", "str"),
        ("first-layer grad (median)", "first_grad", "sci"),
        ("last-layer grad (median)", "last_grad", "sci"),
        ("first / last", "first_over_last", "float"),
        ("total grad (median)", "total_grad", "sci"),
    )
    table = markdown_table(rows, columns)
    atomic_text(out / "gradients.md", table)
    write_manifest(out, "gradients", "Gradient flow", tables=[{"file": "gradients.md"}], figures=[
        {"file": "layers.png", "caption": "gradient norm per layer, early, middle and late in training"},
        {"file": "first_last.png", "caption": "first- and last-layer gradient norm over the steps"},
        {"file": "total.png", "caption": "total gradient norm (after clipping) over the steps"}])
    return table, [*paths, out / "gradients.md"]
