"""`dla detect RUN IMAGE...` and `dla detect RUN --eval`: digits found in large images (Lab 1, exercise 2.2).

Two kinds of run detect: a classifier with a background class made fully convolutional
(`dla train lab1-fcn`, the lab's exercise: an image pyramid and shifted copies, dla.analysis.detect),
and a dense detector trained on canvases (`dla train lab1-fcn-dense`: one pass per image, scores
calibrated on validation canvases, dla.analysis.dense_detect). `open_finder` gives either as a
`Finder`; the rest of the study does not tell them apart.

Outputs go to RUN/detect/ through a temporary folder:

- per image: NAME.png (the image with labelled boxes) and NAME-heat.png (one panel per class: the
  class's score over the image);
- `--eval`: eval.md / eval.json (precision, recall, F1 and mAP@0.5 on fixed, seeded canvases of
  MNIST test digits that no training run sees, for each layout group of `dla.data.canvas.LAYOUTS`
  and all together; images per second), eval-examples.png, and reliability.png (score against the
  share of right detections);
- manifest.json, what is there (`dla.manifest`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dla.analysis.detect import DEFAULT_SIZES, Detections, detect, detection_metrics, heat_grid, match_flags
from dla.errors import DlaError
from dla.io import atomic_dir
from dla.manifest import write_manifest
from dla.report.plots import show_image
from dla.rundir import RunDir

BACKGROUND = "background"
TITLE = "Digit detection"
FCN_THRESHOLD, FCN_STEP, FCN_NMS, DENSE_NMS = 0.005, 4, 0.3, 0.5


def check_detect_args(threshold: float | None, step: int | None, sizes: Sequence[int] | None, nms_iou: float | None,
                      canvases: int) -> None:
    if threshold is not None and not (math.isfinite(threshold) and 0 < threshold < 1):
        raise DlaError(f"--threshold: must be in (0, 1), got {threshold}")
    if step is not None and step < 1:
        raise DlaError(f"--stride: must be >= 1, got {step}")
    if sizes is not None and (not sizes or any(not 8 <= s <= 1024 for s in sizes)):
        raise DlaError(f"--sizes: digit sizes in [8, 1024] px, got {list(sizes)}")
    if nms_iou is not None and not (math.isfinite(nms_iou) and 0 < nms_iou <= 1):
        raise DlaError(f"--nms-iou: must be in (0, 1], got {nms_iou}")
    if canvases < 1:
        raise DlaError(f"--canvases: must be >= 1, got {canvases}")


@dataclass
class Finder:
    """A run's detector with its settings: `find` gives the detections of a batch of same-size images."""

    net: torch.nn.Module
    classes: tuple[str, ...]
    dense: bool
    threshold: float
    nms_iou: float
    window: tuple[int, int]  # the smallest image (h, w) it takes
    background: int | None = None  # classifier FCN: its background class
    step: int = FCN_STEP  # classifier FCN: px between windows
    sizes: tuple[int, ...] = DEFAULT_SIZES  # classifier FCN: the pyramid's digit sizes
    calibration: tuple[float, float] | None = None  # dense: Platt scaling of the heatmap scores
    precision: str = "fp32"

    def find(self, images: torch.Tensor) -> list[Detections]:
        if self.dense:
            from dla.analysis.dense_detect import detect_dense

            return detect_dense(self.net, images, self.threshold, self.calibration, self.nms_iou, self.precision)
        return [detect(self.net, x, self.background, self.threshold, self.step, self.sizes, self.nms_iou) for x in images]

    def heat(self, image: torch.Tensor) -> tuple[torch.Tensor, tuple[float, float, float, float]]:
        """Each class's score over the image (K, gh, gw) and the extent (left, right, bottom, top) to draw it at."""
        if not self.dense:
            return heat_grid(self.net, image, self.step)
        from dla.device import autocast

        with torch.inference_mode(), autocast(image.device, self.precision):
            out = self.net(image[None].contiguous(memory_format=torch.channels_last))[0].float()
        grid = torch.sigmoid(out[: len(self.classes)])
        s = self.net.stride
        return grid, (0.0, grid.shape[-1] * s, grid.shape[-2] * s, 0.0)

    def settings(self) -> str:
        common = f"threshold {self.threshold:g}, NMS IoU {self.nms_iou:g}"
        if self.dense:
            return f"dense detector, one pass per image, calibrated scores, {common}"
        return (f"classifier made fully convolutional, {common}, stride {self.step} px, "
                f"sizes {','.join(map(str, self.sizes))}")


def open_finder(run: RunDir, threshold: float | None = None, step: int | None = None,
                sizes: Sequence[int] | None = None, nms_iou: float | None = None) -> tuple[Finder, Any]:
    """The detector of a `lab1-fcn` or `lab1-fcn-dense` run and its config; unset options take the run's defaults."""
    from dla.build import class_names, input_shape, load_run_model
    from dla.config import load_run_config
    from dla.device import resolve_execution
    from dla.kind import require_command
    from dla.models.detector import DenseDetector

    require_command(load_run_config(run), "dla detect", run.path)
    model, cfg = load_run_model(run)
    classes = class_names(cfg)
    if isinstance(model, DenseDetector):
        if step is not None or sizes is not None:
            raise DlaError("--stride and --sizes set the pyramid of a classifier made fully convolutional (lab1-fcn); "
                           f"{run.path} is a dense detector, which finds every size in one pass")
        path = run.detector
        try:
            saved = json.loads(path.read_text())
            calibration, default = tuple(saved["calibration"]), float(saved["threshold"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DlaError(f"{path}: unreadable or missing ({e.__class__.__name__}); it is written when the run "
                           f"finishes (dla train --resume {run.path}, or dla eval {run.path})") from None
        resolve_execution(cfg.train)
        finder = Finder(model, classes, True, default if threshold is None else threshold,
                        DENSE_NMS if nms_iou is None else nms_iou, (28, 28), calibration=calibration,
                        precision=cfg.train.precision)
        return finder, cfg
    from dla.models.fcn import to_fcn

    shape = input_shape(cfg)
    if cfg.data.canvas:
        raise DlaError(f"{run.path} was trained on {cfg.data.canvas}x{cfg.data.canvas} canvases; dla detect needs a "
                       f"classifier of single 28x28 images (dla train lab1-fcn) or a dense detector (lab1-fcn-dense)")
    fcn = to_fcn(model, shape)
    step = FCN_STEP if step is None else step
    if step > fcn.stride:
        raise DlaError(f"--stride {step}: the converted net already steps {fcn.stride} px; give 1-{fcn.stride}")
    background = classes.index(BACKGROUND) if BACKGROUND in classes else None
    if background is None:
        print(f"note: {run.path} has no background class, so every window scores some digit; "
              f"train with data.background_class=true (dla train lab1-fcn) for a detector")
    finder = Finder(fcn, classes, False, FCN_THRESHOLD if threshold is None else threshold,
                    FCN_NMS if nms_iou is None else nms_iou, tuple(shape[1:]), background, step,
                    tuple(sizes) if sizes is not None else DEFAULT_SIZES)
    return finder, cfg


def _draw_boxes(ax, det: Detections, classes, color: str = "red", gt: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
    from dla.report.plots import pyplot

    plt = pyplot()
    if gt is not None:
        for (x0, y0, x1, y1), lab in zip(gt[0].tolist(), gt[1].tolist()):
            ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, color="lime", lw=1, ls="--"))
    for (x0, y0, x1, y1), lab, s in zip(det.boxes.tolist(), det.labels.tolist(), det.scores.tolist()):
        ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, color=color, lw=1.2))
        ax.text(x0, y0 - 1, f"{classes[lab]} {s:.2f}", color=color, fontsize=7, va="bottom",
                bbox={"facecolor": "black", "alpha": 0.5, "pad": 0.5, "lw": 0})


def run_detect(run: RunDir, images: Sequence[str], threshold: float | None = None, step: int | None = None,
               sizes: Sequence[int] | None = None, nms_iou: float | None = None) -> dict[str, Any]:
    from dla.analysis.cam_study import _safe_name
    from dla.data.imagefile import read_image
    from dla.report.plots import pyplot, save_figure

    check_detect_args(threshold, step, sizes, nms_iou, 1)
    finder, cfg = open_finder(run, threshold, step, sizes, nms_iou)
    classes = finder.classes
    c = 3 if cfg.data.name == "cifar10" else 1
    h, w = finder.window
    xs = [read_image(p, "L" if c == 1 else "RGB", None) for p in images]  # all checked before any work
    for p, x in zip(images, xs):
        if x.shape[1] < h or x.shape[2] < w:
            raise DlaError(f"{p}: {x.shape[2]}x{x.shape[1]} px is smaller than the {w}x{h} window of {run.path}")
    plt = pyplot()
    lines, used, figures = [], set(), []
    out = run.path / "detect"
    with atomic_dir(out) as tmp:
        for path, x in zip(images, xs):
            det = finder.find(x[None])[0]
            name = _safe_name(path, used)
            fig, ax = plt.subplots(figsize=(5, 5 * x.shape[1] / x.shape[2]))
            show_image(ax, x)
            _draw_boxes(ax, det, classes)
            ax.set_title(f"{Path(path).name}: {len(det.scores)} found", fontsize=9)
            save_figure(fig, tmp / f"{name}.png")
            grid, extent = finder.heat(x)
            shown = [k for k in range(len(classes)) if k != finder.background]
            cols = min(5, len(shown))
            rows = -(-len(shown) // cols)
            fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.3 * rows), squeeze=False)
            for ax in axes.flat:
                ax.axis("off")
            for ax, k in zip(axes.flat, shown):
                show_image(ax, x)
                ax.imshow(grid[k].numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1, extent=extent)
                ax.set_title(f"p({classes[k]})", fontsize=8)
            what = ("each class's centre heatmap" if finder.dense
                    else f"each class's probability per {w}x{h} window (training scale)")
            fig.suptitle(f"{Path(path).name}: {what}", fontsize=9)
            save_figure(fig, tmp / f"{name}-heat.png")
            found = ", ".join(f"{classes[l]} ({s:.2f}) at [{', '.join(f'{v:.0f}' for v in b)}]"
                              for b, l, s in zip(det.boxes.tolist(), det.labels.tolist(), det.scores.tolist()))
            lines.append(f"{path}: {len(det.scores)} found{': ' + found if found else ''}")
            figures += [{"file": f"{name}.png", "caption": f"{Path(path).name}: {len(det.scores)} digits found"},
                        {"file": f"{name}-heat.png", "caption": f"{Path(path).name}: {what}"}]
        write_manifest(tmp, "detect", TITLE, figures, over=out)
    return {"out": out, "lines": lines}


EVAL_COLUMNS = (("layout", "layout", "str"), ("precision", "precision", "pct"), ("recall", "recall", "pct"),
                ("F1", "f1", "pct"), ("mAP@0.5", "map50", "pct"), ("digits", "digits", "int"),
                ("detections", "detections", "int"), ("images/s", "images_per_s", "time"))
RELIABILITY_BINS = 10


def reliability(scores: torch.Tensor, right: torch.Tensor, bins: int = RELIABILITY_BINS) -> list[dict[str, float]]:
    """Per score bin [i / bins, (i + 1) / bins): detections, mean score and share right (empty bins left out)."""
    rows = []
    idx = (scores * bins).long().clamp(0, bins - 1)
    for i in range(bins):
        sel = idx == i
        if sel.any():
            rows.append({"low": i / bins, "high": (i + 1) / bins, "n": int(sel.sum()),
                         "score": float(scores[sel].mean()), "precision": float(right[sel].float().mean())})
    return rows


def expected_calibration_error(rows: list[dict[str, float]]) -> float:
    n = sum(r["n"] for r in rows)
    return sum(r["n"] * abs(r["score"] - r["precision"]) for r in rows) / n if n else 0.0


def plot_reliability(scores: torch.Tensor, right: torch.Tensor, threshold: float, path: Path, title: str) -> Path:
    """The reliability diagram: mean score against the share of right detections per score bin, and the counts."""
    from dla.report.plots import pyplot, save_figure

    plt = pyplot()
    rows = reliability(scores, right)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(4.6, 5.4), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="calibrated")
    top.plot([r["score"] for r in rows], [r["precision"] for r in rows], "o-", color="tab:blue", label="detections")
    top.axvline(threshold, color="tab:red", lw=1, label=f"default threshold {threshold:.2f}")
    top.set_ylabel("share right (precision)")
    top.set_ylim(0, 1.02)
    top.legend(fontsize=7, loc="upper left")
    top.set_title(f"{title}\nECE {expected_calibration_error(rows):.3f} over {len(scores)} detections", fontsize=8)
    bottom.bar([(r["low"] + r["high"]) / 2 for r in rows], [r["n"] for r in rows], width=0.9 / RELIABILITY_BINS,
               color="tab:blue", alpha=0.6)
    bottom.set_yscale("log")
    bottom.set_xlabel("score")
    bottom.set_ylabel("detections")
    bottom.set_xlim(0, 1)
    return save_figure(fig, path)


def plot_examples(images: Sequence[torch.Tensor], truth: Sequence[tuple[torch.Tensor, torch.Tensor]],
                  preds: Sequence[Detections], classes: Sequence[str], path: Path, title: str,
                  titles: Sequence[str] | None = None) -> Path:
    """Canvases (uint8, any sizes) with their detections (red) and true boxes (green, dashed), four a row."""
    from dla.data.batches import to_unit_float
    from dla.report.plots import pyplot, save_figure

    plt = pyplot()
    cols = min(4, len(images))
    rows = -(-len(images) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (ax, image, gt, pred) in enumerate(zip(axes.flat, images, truth, preds)):
        show_image(ax, to_unit_float(image))
        _draw_boxes(ax, pred, classes, gt=gt)
        if titles:
            ax.set_title(titles[i], fontsize=8, pad=8)
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


def run_detect_eval(run: RunDir, threshold: float | None = None, step: int | None = None,
                    sizes: Sequence[int] | None = None, nms_iou: float | None = None, canvases: int = 500,
                    data_root: Path | None = None, layouts: Sequence[str] | None = None) -> dict[str, Any]:
    """Detection quality on the fixed evaluation canvases of every layout group; writes RUN/detect/eval.*."""
    from tqdm.auto import tqdm

    from dla.data.batches import to_unit_float
    from dla.data.canvas import EVAL_SEED, LAYOUTS, eval_canvases
    from dla.data.vision import load_arrays
    from dla.report.tables import markdown_table

    check_detect_args(threshold, step, sizes, nms_iou, canvases)
    layouts = list(layouts or LAYOUTS)
    bad = [g for g in layouts if g not in LAYOUTS]
    if bad:
        raise DlaError(f"--layouts: unknown layout {bad[0]!r}; valid: {', '.join(LAYOUTS)}")
    finder, cfg = open_finder(run, threshold, step, sizes, nms_iou)
    if cfg.data.name != "mnist" or getattr(cfg.data, "classes", None):
        raise DlaError(f"--eval pastes MNIST test digits (all ten classes): it needs an MNIST run, not {cfg.data.name}"
                       + (" with data.classes" if getattr(cfg.data, "classes", None) else ""))
    _, test, _ = load_arrays("mnist", data_root, cfg.data.download)
    rows, every, boxes, labels, scores, flags, examples = [], [], [], [], [], [], []
    seconds = 0.0
    chunk = 50 if finder.dense else 1
    bar = tqdm(total=canvases * len(layouts), desc="detect", leave=False)
    for name in layouts:
        canv = eval_canvases(test.x, test.y, name, canvases)
        x = to_unit_float(canv.images)
        preds = []
        started = time.perf_counter()
        for i in range(0, len(x), chunk):
            preds += finder.find(x[i : i + chunk])
            bar.update(len(x[i : i + chunk]))
        took = time.perf_counter() - started
        seconds += took
        m = detection_metrics(preds, canv.boxes, canv.labels)
        rows.append({"layout": f"{name} ({LAYOUTS[name].what})", "group": name, **m, "images_per_s": len(x) / took})
        every += preds
        boxes, labels = boxes + canv.boxes, labels + canv.labels
        scores += [p.scores for p in preds]
        flags += [match_flags(p, b, lab) for p, b, lab in zip(preds, canv.boxes, canv.labels)]
        examples += [(canv, preds, i, name) for i in range(min(2 if len(layouts) > 3 else 4, len(preds)))]
    bar.close()
    if len(layouts) > 1:
        m = detection_metrics(every, boxes, labels)
        rows.append({"layout": "all", "group": "all", **m, "images_per_s": len(every) / seconds})
    table = markdown_table(rows, EVAL_COLUMNS)
    header = (f"Detection, run {run.path}: {canvases} canvases per layout of MNIST test digits (seed {EVAL_SEED} + "
              f"the layout's index); right = right class and IoU >= 0.5 with the digit's frame. {finder.settings()}; "
              f"{torch.get_num_threads()} CPU threads.\n\n")
    out = run.path / "detect"
    with atomic_dir(out) as tmp:
        (tmp / "eval.md").write_text(header + table)
        (tmp / "eval.json").write_text(json.dumps({
            "run": str(run.path), "canvases": canvases, "seed": EVAL_SEED, "layouts": layouts,
            "threshold": finder.threshold, "nms_iou": finder.nms_iou, "dense": finder.dense,
            **({} if finder.dense else {"stride": finder.step, "sizes": list(finder.sizes)}),
            **{k: v for k, v in rows[-1].items() if k not in ("layout", "group")},
            "groups": {r["group"]: {k: v for k, v in r.items() if k not in ("layout", "group")} for r in rows}}, indent=2))
        plot_examples([c.images[i] for c, _, i, _ in examples], [(c.boxes[i], c.labels[i]) for c, _, i, _ in examples],
                      [p[i] for _, p, i, _ in examples], finder.classes, tmp / "eval-examples.png",
                      f"detections (red) at threshold {finder.threshold:g} and true boxes (green, dashed)",
                      [f"{name} ({c.images.shape[-1]} px)" for c, _, _, name in examples])
        plot_reliability(torch.cat(scores), torch.cat(flags), finder.threshold, tmp / "reliability.png",
                         f"{run.path.name}: evaluation detections at threshold {finder.threshold:g}")
        write_manifest(tmp, "detect", TITLE, [
            {"file": "eval-examples.png", "caption": "evaluation canvases, two of each layout: detections (red) and "
             "true boxes (green, dashed)"},
            {"file": "reliability.png", "caption": "score against the share of right detections"}],
            [{"file": "eval.md"}], metrics="eval.json", over=out)
    return {"out": out, "header": header, "table": table, "metrics": rows[-1], "rows": rows}
