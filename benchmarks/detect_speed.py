"""Lab 1.2.2 detectors side by side: speed, and a standard single-stage detector as the anchor.

Three detectors on the same 128x128 evaluation canvases (`dla.data.canvas`, layout "base"), one
image at a time as `dla detect IMAGE` runs them, on this machine's threads:

  fcn      today's detector: the lab1-fcn classifier made fully convolutional, an image pyramid of
           5 levels x 16 shifted copies (dla.analysis.detect); a trained run with --fcn-run, else
           the same net untrained (its speed does not depend on what it learnt, bar NMS)
  dense    the dense detector of `dla train lab1-fcn-dense` (--dense-run, else untrained): one pass
  fcos     torchvision's FCOS, trained here from scratch (--anchor-steps) on the same training
           canvases as lab1-fcn-dense, with a backbone of the dense detector's size (its encoder, a
           feature pyramid P3-P5 of 64 channels, FCOS's head of 4 convs per branch)

It prints canvases/s (the median of --repeats timed passes) and each one's ratio to `fcn`, and
with --anchor-steps the anchor's and the dense detector's F1 and mAP@0.5 on every layout group
(`dla detect --eval`'s canvases; FCOS at the score threshold of its best validation F1, found the
same way as the dense detector's). Run it alone on an idle machine:

    python benchmarks/detect_speed.py --fcn-run runs/lab1-fcn/fcn-mnist \\
        --dense-run runs/lab1-fcn-dense/dense-mnist --anchor-steps 5000
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from dla.analysis.detect import Detections, detection_metrics, match_flags
from dla.analysis.detect_study import open_finder
from dla.build import model_for
from dla.config import load_experiment
from dla.data.batches import to_unit_float
from dla.data.canvas import LAYOUTS, eval_canvases, layout_canvases, training_canvases
from dla.data.vision import default_data_root, get_spec, load_arrays
from dla.device import cpu_has_bf16
from dla.rundir import RunDir


def timed(find, images: torch.Tensor, repeats: int) -> float:
    """Median canvases/s of `find` over one image at a time, after one warm-up image."""
    find(images[:1])
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        for i in range(len(images)):
            find(images[i : i + 1])
        rates.append(len(images) / (time.perf_counter() - started))
    return statistics.median(rates)


class Backbone(nn.Module):
    """The dense detector's encoder (stride 4-32) under a torchvision feature pyramid: P3, P4, P5."""

    out_channels = 64

    def __init__(self, width: int = 16):
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork

        from dla.models.detector import DenseDetector

        enc = DenseDetector(nn.Identity(), 1, 10, width)
        self.stem, self.stages = enc.stem, enc.stages
        self.fpn = FeaturePyramidNetwork([4 * width, 8 * width, 8 * width], self.out_channels)

    def forward(self, x):
        feats, y = [], self.stem(x)
        for stage in self.stages:
            y = stage(y)
            feats.append(y)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats[1:])))


def fcos(width: int = 16):
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    spec = get_spec("mnist")
    anchors = AnchorGenerator(((8,), (16,), (32,)), ((1.0,),) * 3)  # = the strides, as FCOS's own
    return FCOS(Backbone(width), num_classes=11, min_size=128, max_size=1024, image_mean=list(spec.mean),
                image_std=list(spec.std), anchor_generator=anchors, score_thresh=0.05, detections_per_img=100)


def fcos_find(model, images: torch.Tensor, threshold: float = 0.05) -> list[Detections]:
    size = images.shape[-1]
    model.transform.min_size, model.transform.max_size = (size,), size  # no resizing: the canvas as it is
    with torch.inference_mode():
        out = model(list(images))
    return [Detections(o["boxes"][o["scores"] >= threshold], o["labels"][o["scores"] >= threshold] - 1,
                       o["scores"][o["scores"] >= threshold]) for o in out]


def train_fcos(model, train, steps: int, batch: int, lr: float, seed: int) -> float:
    """AdamW with a one-cycle schedule, as lab1-fcn-dense; fresh canvases of 8,000 per epoch. Returns seconds."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=min(0.5, max(0.1, 2.5 / steps)))
    model.train()
    g = torch.Generator().manual_seed(seed)
    done, epoch, started = 0, 0, time.perf_counter()
    while done < steps:
        canv = training_canvases(train.x, train.y, 8000, 128, (1, 8), (12, 64), 1, 0.5, seed + epoch)
        epoch += 1
        perm = torch.randperm(len(canv), generator=g).tolist()
        for start in range(0, len(perm) - batch + 1, batch):
            if done >= steps:
                break
            rows = perm[start : start + batch]
            images = list(to_unit_float(canv.images[rows]))
            targets = [{"boxes": canv.boxes[i], "labels": canv.labels[i] + 1} for i in rows]
            losses = model(images, targets)
            loss = sum(losses.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            sched.step()
            done += 1
            if done % 250 == 0:
                print(f"  fcos step {done}/{steps}: loss {float(loss):.3f} "
                      f"({time.perf_counter() - started:.0f} s)", flush=True)
    model.eval()
    return time.perf_counter() - started


def best_threshold(find, val_x, val_y) -> float:
    """The score threshold of best F1 on validation canvases of every layout, in [0.05, 0.95]."""
    from dla.analysis.dense_detect import best_f1_threshold

    scores, flags, digits = [], [], 0
    for i, layout in enumerate(LAYOUTS.values()):
        canv = layout_canvases(val_x, val_y, layout, 100, 7 + i)
        preds = []
        for k in range(0, len(canv), 50):
            preds += find(to_unit_float(canv.images[k : k + 50]))
        scores += [p.scores for p in preds]
        flags += [match_flags(p, b, lab) for p, b, lab in zip(preds, canv.boxes, canv.labels)]
        digits += sum(len(lab) for lab in canv.labels)
    return best_f1_threshold(scores, flags, digits, low=0.05)[0]


def quality(find, test, n: int) -> dict[str, dict[str, float]]:
    rows = {}
    for name in LAYOUTS:
        canv = eval_canvases(test.x, test.y, name, n)
        preds = []
        for k in range(0, len(canv), 50):
            preds += find(to_unit_float(canv.images[k : k + 50]))
        rows[name] = detection_metrics(preds, canv.boxes, canv.labels)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fcn-run", help="a lab1-fcn run (default: the same net, untrained)")
    ap.add_argument("--dense-run", help="a lab1-fcn-dense run (default: the same net, untrained)")
    ap.add_argument("--canvases", type=int, default=200, help="canvases timed per pass (fcn: a tenth, at least 10)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--anchor-steps", type=int, default=0, help="train FCOS for this many steps (0: no anchor)")
    ap.add_argument("--anchor-batch", type=int, default=32)
    ap.add_argument("--anchor-lr", type=float, default=3e-3)
    ap.add_argument("--quality-canvases", type=int, default=500, help="per layout, for F1 and mAP")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args()
    for name in ("canvases", "repeats", "quality_canvases"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')}: must be >= 1")
    if args.anchor_steps < 0 or args.anchor_batch < 1 or not args.anchor_lr > 0:
        ap.error("--anchor-steps >= 0, --anchor-batch >= 1 and --anchor-lr > 0")

    torch.manual_seed(args.seed)
    root = default_data_root()
    full_train, test, _ = load_arrays("mnist", root, False)
    x = to_unit_float(eval_canvases(test.x, test.y, "base", args.canvases).images)
    precision = "bf16" if cpu_has_bf16() else "fp32"
    print(f"{torch.get_num_threads()} threads; dense detector in {precision}")

    if args.fcn_run:
        fcn_finder, _ = open_finder(RunDir.open(args.fcn_run))
    else:
        from dla.analysis.detect_study import Finder
        from dla.models.fcn import to_fcn

        cfg = load_experiment("lab1-fcn", [])
        fcn_finder = Finder(to_fcn(model_for(cfg).eval(), (1, 28, 28)), tuple(range(11)), False, 0.005, 0.3, (28, 28),
                            background=10)
    if args.dense_run:
        dense_finder, _ = open_finder(RunDir.open(args.dense_run))
    else:
        from dla.analysis.detect_study import Finder

        cfg = load_experiment("lab1-fcn-dense", [])
        dense_finder = Finder(model_for(cfg).eval(), tuple(range(10)), True, 0.3, 0.5, (28, 28), precision=precision)

    results: dict[str, dict] = {}
    n_fcn = max(10, args.canvases // 10)
    results["fcn"] = {"canvases_per_s": timed(fcn_finder.find, x[:n_fcn], args.repeats)}
    print(f"fcn (today's): {results['fcn']['canvases_per_s']:.2f} canvases/s ({n_fcn} canvases)", flush=True)
    chosen = dense_finder.precision
    for prec in dict.fromkeys([chosen, "fp32"]):  # the run's precision (bf16 where native), and fp32
        dense_finder.precision = prec
        one = timed(dense_finder.find, x, args.repeats)
        batched = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            dense_finder.find(x)
            batched.append(len(x) / (time.perf_counter() - started))
        name = "dense" if prec == chosen else f"dense-{prec}"
        results[name] = {"canvases_per_s": one, "batched_canvases_per_s": statistics.median(batched), "precision": prec}
        print(f"{name} ({prec}): {one:.1f} canvases/s one at a time, {statistics.median(batched):.0f} in batches of 50",
              flush=True)
    dense_finder.precision = chosen

    if args.anchor_steps:
        model = fcos()
        params = sum(p.numel() for p in model.parameters())
        print(f"fcos: {params:,} parameters; training {args.anchor_steps} steps of {args.anchor_batch} canvases", flush=True)
        perm = torch.randperm(len(full_train.y), generator=torch.Generator().manual_seed(0))  # lab1-fcn-dense's split
        train_idx, val_idx = perm[5000:], perm[:5000]
        train = type(full_train)(full_train.x[train_idx], full_train.y[train_idx])
        seconds = train_fcos(model, train, args.anchor_steps, args.anchor_batch, args.anchor_lr, args.seed)
        threshold = best_threshold(lambda b: fcos_find(model, b), full_train.x[val_idx], full_train.y[val_idx])
        find = lambda b: fcos_find(model, b, threshold)  # noqa: E731
        results["fcos"] = {"params": params, "train_s": seconds, "threshold": threshold,
                           "canvases_per_s": timed(find, x, args.repeats),
                           "layouts": quality(find, test, args.quality_canvases)}
        results["dense"]["layouts"] = quality(dense_finder.find, test, args.quality_canvases)
        results["dense"]["threshold"] = dense_finder.threshold

    base = results["fcn"]["canvases_per_s"]
    print("\n| detector | canvases/s (1 at a time) | vs today's | canvases/s (batches of 50) |")
    print("|---|---:|---:|---:|")
    for name, r in results.items():
        batched = f"{r['batched_canvases_per_s']:.0f}" if "batched_canvases_per_s" in r else "-"
        print(f"| {name} | {r['canvases_per_s']:.1f} | {r['canvases_per_s'] / base:.1f}x | {batched} |")
    if args.anchor_steps:
        print("\n| layout | dense F1 | dense mAP@0.5 | FCOS F1 | FCOS mAP@0.5 |")
        print("|---|---:|---:|---:|---:|")
        for name in LAYOUTS:
            d, f = results["dense"]["layouts"][name], results["fcos"]["layouts"][name]
            print(f"| {name} | {100 * d['f1']:.2f} | {100 * d['map50']:.2f} | {100 * f['f1']:.2f} | {100 * f['map50']:.2f} |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
