"""`dla detect RUN IMAGE...` and `dla detect RUN --eval`: digits found in large images (Lab 1, exercise 2.2).

Outputs go to RUN/detect/ through a temporary folder:

- per image: NAME.png (the image with labelled boxes) and NAME-heat.png (one panel per class: the
  class's probability for each window at the training scale);
- `--eval`: eval.md / eval.json (precision, recall, F1 and mAP@0.5 on the fixed, seeded canvases of
  MNIST test digits that no training run sees; images per second) and eval-examples.png;
- manifest.json, what is there (`dla.manifest`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from dla.analysis.detect import DEFAULT_SIZES, Detections, detect, detection_metrics, heat_grid
from dla.errors import DlaError
from dla.io import atomic_dir
from dla.manifest import write_manifest
from dla.report.plots import show_image
from dla.rundir import RunDir

EVAL_CANVASES, EVAL_SIZE, EVAL_COUNT, EVAL_SCALES, EVAL_SEED = 500, 128, (1, 5), (20, 40), 2026
BACKGROUND = "background"
TITLE = "Digit detection"


def check_detect_args(threshold: float, step: int, sizes: Sequence[int], nms_iou: float, canvases: int) -> None:
    if not (math.isfinite(threshold) and 0 < threshold < 1):
        raise DlaError(f"--threshold: must be in (0, 1), got {threshold}")
    if step < 1:
        raise DlaError(f"--stride: must be >= 1, got {step}")
    if not sizes or any(not 8 <= s <= 1024 for s in sizes):
        raise DlaError(f"--sizes: digit sizes in [8, 1024] px, got {list(sizes)}")
    if not (math.isfinite(nms_iou) and 0 < nms_iou <= 1):
        raise DlaError(f"--nms-iou: must be in (0, 1], got {nms_iou}")
    if canvases < 1:
        raise DlaError(f"--canvases: must be >= 1, got {canvases}")


def _open(run: RunDir, step: int):
    from dla.build import class_names, input_shape, load_run_model
    from dla.config import load_run_config
    from dla.kind import require_command
    from dla.models.fcn import to_fcn

    require_command(load_run_config(run), "dla detect", run.path)
    model, cfg = load_run_model(run)
    shape = input_shape(cfg)
    if cfg.data.canvas:
        raise DlaError(f"{run.path} was trained on {cfg.data.canvas}x{cfg.data.canvas} canvases; dla detect needs a "
                       f"classifier of single 28x28 images (dla train lab1-fcn)")
    fcn = to_fcn(model, shape)
    if step > fcn.stride:
        raise DlaError(f"--stride {step}: the converted net already steps {fcn.stride} px; give 1-{fcn.stride}")
    classes = class_names(cfg)
    background = classes.index(BACKGROUND) if BACKGROUND in classes else None
    if background is None:
        print(f"note: {run.path} has no background class, so every window scores some digit; "
              f"train with data.background_class=true (dla train lab1-fcn) for a detector")
    return fcn, cfg, classes, shape, background


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


def run_detect(run: RunDir, images: Sequence[str], threshold: float, step: int, sizes: Sequence[int],
               nms_iou: float) -> dict[str, Any]:
    from dla.analysis.cam_study import _safe_name
    from dla.data.imagefile import read_image
    from dla.report.plots import pyplot, save_figure

    check_detect_args(threshold, step, sizes, nms_iou, 1)
    fcn, cfg, classes, (c, h, w), background = _open(run, step)
    xs = [read_image(p, "L" if c == 1 else "RGB", None) for p in images]  # all checked before any work
    for p, x in zip(images, xs):
        if x.shape[1] < h or x.shape[2] < w:
            raise DlaError(f"{p}: {x.shape[2]}x{x.shape[1]} px is smaller than the {w}x{h} window of {run.path}")
    plt = pyplot()
    lines, used, figures = [], set(), []
    out = run.path / "detect"
    with atomic_dir(out) as tmp:
        for path, x in zip(images, xs):
            det = detect(fcn, x, background, threshold, step, tuple(sizes), nms_iou)
            name = _safe_name(path, used)
            fig, ax = plt.subplots(figsize=(5, 5 * x.shape[1] / x.shape[2]))
            show_image(ax, x)
            _draw_boxes(ax, det, classes)
            ax.set_title(f"{Path(path).name}: {len(det.scores)} found", fontsize=9)
            save_figure(fig, tmp / f"{name}.png")
            grid, extent = heat_grid(fcn, x, step)
            shown = [k for k in range(len(classes)) if k != background]
            cols = min(5, len(shown))
            rows = -(-len(shown) // cols)
            fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.3 * rows), squeeze=False)
            for ax in axes.flat:
                ax.axis("off")
            for ax, k in zip(axes.flat, shown):
                show_image(ax, x)
                ax.imshow(grid[k].numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1, extent=extent)
                ax.set_title(f"p({classes[k]})", fontsize=8)
            fig.suptitle(f"{Path(path).name}: each class's probability per {w}x{h} window (training scale)", fontsize=9)
            save_figure(fig, tmp / f"{name}-heat.png")
            found = ", ".join(f"{classes[l]} ({s:.2f}) at [{', '.join(f'{v:.0f}' for v in b)}]"
                              for b, l, s in zip(det.boxes.tolist(), det.labels.tolist(), det.scores.tolist()))
            lines.append(f"{path}: {len(det.scores)} found{': ' + found if found else ''}")
            figures += [{"file": f"{name}.png", "caption": f"{Path(path).name}: {len(det.scores)} digits found"},
                        {"file": f"{name}-heat.png", "caption": f"{Path(path).name}: each class's probability per window"}]
        write_manifest(tmp, "detect", TITLE, figures, over=out)
    return {"out": out, "lines": lines}


EVAL_COLUMNS = (("precision", "precision", "pct"), ("recall", "recall", "pct"), ("F1", "f1", "pct"),
                ("mAP@0.5", "map50", "pct"), ("digits", "digits", "int"), ("detections", "detections", "int"),
                ("images/s", "images_per_s", "float"))


def run_detect_eval(run: RunDir, threshold: float, step: int, sizes: Sequence[int], nms_iou: float,
                    canvases: int = EVAL_CANVASES, data_root: Path | None = None) -> dict[str, Any]:
    """Detection quality on the fixed evaluation canvases; writes RUN/detect/eval.*."""
    from tqdm.auto import tqdm

    from dla.data.batches import to_unit_float
    from dla.data.canvas import detection_canvases
    from dla.data.vision import load_arrays
    from dla.report.plots import pyplot, save_figure
    from dla.report.tables import markdown_table

    check_detect_args(threshold, step, sizes, nms_iou, canvases)
    fcn, cfg, classes, _, background = _open(run, step)
    if cfg.data.name != "mnist" or cfg.data.classes:
        raise DlaError(f"--eval pastes MNIST test digits (all ten classes): it needs an MNIST run, not {cfg.data.name}"
                       + (" with data.classes" if cfg.data.classes else ""))
    _, test, _ = load_arrays("mnist", data_root, cfg.data.download)
    canv = detection_canvases(test.x, test.y, canvases, EVAL_SIZE, EVAL_COUNT, EVAL_SCALES, EVAL_SEED)
    x = to_unit_float(canv.images)
    preds = []
    started = time.perf_counter()
    for i in tqdm(range(len(x)), desc="detect", leave=False):
        preds.append(detect(fcn, x[i], background, threshold, step, tuple(sizes), nms_iou))
    seconds = time.perf_counter() - started
    metrics = detection_metrics(preds, canv.boxes, canv.labels)
    metrics["images_per_s"] = len(x) / seconds
    table = markdown_table([metrics], EVAL_COLUMNS)
    header = (f"Detection, run {run.path}: {canvases} canvases of {EVAL_SIZE}x{EVAL_SIZE} (seed {EVAL_SEED}), "
              f"{EVAL_COUNT[0]}-{EVAL_COUNT[1]} non-overlapping MNIST test digits each at {EVAL_SCALES[0]}-{EVAL_SCALES[1]} px; "
              f"right = right class and IoU >= 0.5. Settings: threshold {threshold}, stride {step} px, "
              f"sizes {','.join(map(str, sizes))}, NMS IoU {nms_iou}; {torch.get_num_threads()} CPU threads.\n\n")
    plt = pyplot()
    show = min(8, canvases)
    cols = min(4, show)
    rows = -(-show // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, range(show)):
        show_image(ax, x[i])
        _draw_boxes(ax, preds[i], classes, gt=(canv.boxes[i], canv.labels[i]))
    fig.suptitle("detections (red) and true boxes (green, dashed)", fontsize=9)
    out = run.path / "detect"
    with atomic_dir(out) as tmp:
        (tmp / "eval.md").write_text(header + table)
        (tmp / "eval.json").write_text(json.dumps({"run": str(run.path), "canvases": canvases, "seed": EVAL_SEED,
                                                   "threshold": threshold, "stride": step, "sizes": list(sizes),
                                                   "nms_iou": nms_iou, **metrics}, indent=2))
        save_figure(fig, tmp / "eval-examples.png")
        write_manifest(tmp, "detect", TITLE, [{"file": "eval-examples.png", "caption": "evaluation canvases: detections "
                                               "(red) and true boxes (green, dashed)"}], [{"file": "eval.md"}],
                       metrics="eval.json", over=out)
    return {"out": out, "header": header, "table": table, "metrics": metrics}
