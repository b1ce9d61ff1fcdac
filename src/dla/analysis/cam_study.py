"""`dla cam RUN [IMAGES...]`: class activation maps as overlays or a gallery, and `--pointing-game`.

Outputs go to RUN/cam/ through a temporary folder (a failed command leaves RUN/cam/ as it was):

- with image files: METHOD/<image name>.png, each the image, its map and the overlay, titled with
  the predicted class and its confidence;
- without: gallery-METHOD.png, `--n` test images of the run's data set, correct and wrong ones;
- `--pointing-game`: pointing-game.md / .json and pointing-game.png (canvases, maps, boxes, maxima);
- cam.md, what was drawn (appended to by each command), and manifest.json (`dla.manifest`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from dla.analysis.cam import METHODS, argmax_points, check_method, has_gap_head, heatmaps, pointing_game
from dla.errors import DlaError
from dla.io import atomic_dir, unique_name
from dla.manifest import write_manifest
from dla.report.plots import show_image
from dla.rundir import RunDir

GREY_28 = (1, 28, 28)
TITLE = "Class activation maps"


def _open(run: RunDir):
    from dla.build import class_names, input_shape, load_run_model
    from dla.config import load_run_config
    from dla.kind import require_command

    cfg = load_run_config(run)
    require_command(cfg, "dla cam", run.path)
    if cfg.model.name != "cnn":
        raise DlaError(f"dla cam needs a CNN run (model.name=cnn); {run.path} is model.name={cfg.model.name}")
    model, cfg = load_run_model(run)
    return model, cfg, class_names(cfg), input_shape(cfg)


def check_class(cls: int | None, classes: Sequence[str], run: RunDir) -> None:
    if cls is not None and not 0 <= cls < len(classes):
        raise DlaError(f"--class {cls}: {run.path} has {len(classes)} classes (0-{len(classes) - 1})")


def _safe_name(path: str, used: set[str]) -> str:
    return unique_name(re.sub(r"[^A-Za-z0-9._-]+", "_", Path(path).stem) or "image", used)


def run_cam(run: RunDir, images: Sequence[str], method: str | None, cls: int | None, n: int,
            data_root: Path) -> dict[str, Any]:
    """Overlays for image files, or a gallery of `n` test images; returns what was written."""
    from dla.data.imagefile import read_image
    from dla.build import load_data
    from dla.data.batches import to_unit_float
    from dla.report.plots import pyplot, save_figure

    if n < 1:
        raise DlaError(f"--n: must be >= 1, got {n}")
    model, cfg, classes, shape = _open(run)
    method = method or ("cam" if has_gap_head(model) else "gradcam")
    check_method(model, method)
    check_class(cls, classes, run)
    gap = has_gap_head(model)
    c, h, w = shape
    plt = pyplot()
    lines = []
    out = run.path / "cam"
    if images:
        # a GAP net takes any size: keep the file's; the original head needs the training size
        xs = [read_image(p, "L" if c == 1 else "RGB", None if gap else (w, h)) for p in images]  # all checked first
        if gap:
            small = [p for p, x in zip(images, xs) if x.shape[1] < h or x.shape[2] < w]
            if small:
                raise DlaError(f"{small[0]}: smaller than the {w}x{h} px the run was trained on")
        used: set[str] = set()
        figures = []
        with atomic_dir(out) as tmp:
            for path, x in zip(images, xs):
                with torch.no_grad():
                    probs = model(x[None]).softmax(1)[0]
                pred = int(probs.argmax())
                target = pred if cls is None else cls
                heat = heatmaps(model, x[None], torch.tensor([target]), method)[0]
                fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.8))
                show_image(axes[0], x, title=Path(path).name)
                axes[1].imshow(heat.numpy(), cmap="jet", vmin=0, vmax=1)
                axes[1].set_title(f"{method}: class {classes[target]}", fontsize=8)
                axes[1].axis("off")
                show_image(axes[2], x, heat, f"predicted {classes[pred]} ({probs[pred]:.2f})")
                name = f"{method}/{_safe_name(path, used)}.png"
                save_figure(fig, tmp / name)
                lines.append(f"- `{name}`: {path}, predicted {classes[pred]} ({probs[pred]:.3f}), map of class {classes[target]}")
                figures.append({"file": name, "caption": f"{method} of {Path(path).name}: predicted {classes[pred]} "
                                                         f"({probs[pred]:.2f}), map of class {classes[target]}"})
            _append_md(out, tmp, method, cls, classes, lines, run)
            write_manifest(tmp, "cam", TITLE, figures, [{"file": "cam.md"}], over=out)
        return {"out": out, "lines": lines}

    data = load_data(cfg, data_root)
    x, y = to_unit_float(data.test.x[:2000]), data.test.y[:2000]
    with torch.no_grad():
        probs = torch.cat([model(x[i : i + 256]).softmax(1) for i in range(0, len(x), 256)])
    pred = probs.argmax(1)
    right, wrong = torch.nonzero(pred == y).flatten(), torch.nonzero(pred != y).flatten()
    k_wrong = min(len(wrong), n // 2)
    pick = torch.cat([right[: n - k_wrong], wrong[:k_wrong]])
    targets = pred[pick] if cls is None else torch.full((len(pick),), cls)
    maps = heatmaps(model, x[pick], targets, method)
    cols = min(8, len(pick))
    rows = -(-len(pick) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.5 * cols, 2.05 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i, heat in zip(axes.flat, pick.tolist(), maps):
        ok = int(pred[i]) == int(y[i])
        show_image(ax, x[i], heat, f"{classes[int(pred[i])]} ({probs[i, pred[i]]:.2f})" + ("" if ok else f"\ntrue {classes[int(y[i])]}"),
              "black" if ok else "red")
    fig.suptitle(f"{method} on {data.test_source} test images (red: wrong)", fontsize=9)
    name = f"gallery-{method}.png"
    with atomic_dir(out) as tmp:
        save_figure(fig, tmp / name)
        lines = [f"- `{name}`: {len(pick)} test images of {data.test_source}, {len(pick) - k_wrong} predicted right and "
                 f"{k_wrong} wrong (red), map of the {'predicted class' if cls is None else 'class ' + classes[cls]}"]
        _append_md(out, tmp, method, cls, classes, lines, run)
        write_manifest(tmp, "cam", TITLE, [{"file": name, "caption": f"{method} gallery: {len(pick)} {data.test_source} "
                                                                      f"test images ({k_wrong} wrong, in red)"}],
                       [{"file": "cam.md"}], over=out)
    return {"out": out, "lines": lines}


def _append_md(out: Path, tmp: Path, method: str, cls: int | None, classes, lines: list[str], run: RunDir) -> None:
    old = (out / "cam.md").read_text() if (out / "cam.md").is_file() else "# Class activation maps\n"
    layer = "the last conv block (what the global average pools)" if method == "cam" else "the last conv block"
    how = ("classical CAM (dla's own: sum_k w_ck A_k)" if method == "cam"
           else f"{method} from the grad-cam library")
    text = (f"{old}\n## {method}\n\n{how}, on {layer} of {run.path}; ReLU, bilinear upsampling, scaled to [0, 1]. "
            f"Class: {'the predicted one' if cls is None else classes[cls]}.\n\n" + "\n".join(lines) + "\n")
    (tmp / "cam.md").write_text(text)


POINTING_COLUMNS = (("method", "method", "str"), ("pointing accuracy (%)", "hit", "pct"))


def run_pointing_game(run: RunDir, methods: Sequence[str] | None, canvases: int, size: int, seed: int,
                      data_root: Path) -> dict[str, Any]:
    """The pointing game on `canvases` seeded canvases of `size` px, one MNIST-family test digit each."""
    from dla.data.batches import to_unit_float
    from dla.data.canvas import pointing_canvases
    from dla.data.vision import get_spec, keep_classes, load_arrays
    from dla.report.plots import pyplot, save_figure
    from dla.report.tables import markdown_table

    if canvases < 1:
        raise DlaError(f"--canvases: must be >= 1, got {canvases}")
    if not 28 <= size <= 512:
        raise DlaError(f"--canvas-size: must be in [28, 512], got {size}")
    model, cfg, classes, _ = _open(run)
    spec = get_spec(cfg.data.name)
    if spec.shape != GREY_28:
        raise DlaError(f"--pointing-game pastes 28x28 grey images into black canvases: it needs an MNIST or "
                       f"Fashion-MNIST run, not {spec.title}")
    gap = has_gap_head(model)
    methods = list(methods) if methods else [m for m in METHODS if m != "cam" or gap]
    for m in methods:
        check_method(model, m)
    _, test, _ = load_arrays(cfg.data.name, data_root, cfg.data.download)
    if cfg.data.classes:
        test = keep_classes(test, cfg.data.classes)
    canv = pointing_canvases(test.x, test.y, canvases, size, seed)
    x = to_unit_float(canv.images)
    boxes = torch.cat(canv.boxes)
    labels = torch.cat(canv.labels)
    with torch.no_grad():
        acc = float(torch.cat([model(x[i : i + 256]).argmax(1) for i in range(0, len(x), 256)]).eq(labels).float().mean())
    print(f"pointing game: {canvases} canvases of {size}x{size}, one {spec.title} test digit each (seed {seed}); "
          f"the run classifies {100 * acc:.1f}% of them right")
    hits = pointing_game(model, x, boxes, labels, methods, seed)
    rows = [{"method": k, "hit": v} for k, v in hits.items()]
    table = markdown_table(rows, POINTING_COLUMNS)
    header = (f"Pointing game, run {run.path} (trained on {'%dx%d canvases' % (cfg.data.canvas, cfg.data.canvas) if cfg.data.canvas else 'plain 28x28 images'}): "
              f"{canvases} seeded {size}x{size} canvases (seed {seed}), one {spec.title} test digit each at a random place; "
              f"a hit is the map's maximum (for the true class) inside the digit's ink box. "
              f"Classification accuracy on the canvases: {100 * acc:.1f}%.\n\n")
    plt = pyplot()
    show = min(6, canvases)
    fig, axes = plt.subplots(len(methods), show, figsize=(1.6 * show, 1.7 * len(methods)), squeeze=False)
    for r, m in enumerate(methods):
        maps = heatmaps(model, x[:show], labels[:show], m)
        points = argmax_points(maps)
        for j in range(show):
            ax = axes[r, j]
            show_image(ax, x[j], maps[j], m if j == 0 else "")
            x0, y0, x1, y1 = boxes[j].tolist()
            ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, color="lime", lw=1))
            ax.plot(*points[j].tolist(), marker="x", color="white", ms=6, mew=2)
    fig.suptitle("map, ink box (green) and the map's maximum (x)", fontsize=9)
    out = run.path / "cam"
    with atomic_dir(out) as tmp:
        (tmp / "pointing-game.md").write_text(header + table)
        (tmp / "pointing-game.json").write_text(json.dumps(
            {"run": str(run.path), "canvases": canvases, "size": size, "seed": seed, "canvas_accuracy": acc,
             "trained_on_canvas": cfg.data.canvas, "hits": hits}, indent=2))
        save_figure(fig, tmp / "pointing-game.png")
        write_manifest(tmp, "cam", TITLE, [{"file": "pointing-game.png", "caption": "pointing game: maps, ink boxes "
                                            "(green) and each map's maximum (x)"}], [{"file": "pointing-game.md"}],
                       metrics={"pointing_accuracy": hits}, over=out)
    return {"out": out, "header": header, "table": table, "hits": hits}
