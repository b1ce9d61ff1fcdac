"""Training a dense digit detector on the one loop (`dla train lab1-fcn-dense`).

Each epoch is `data.canvases` new canvases of training digits (seeded from the run's data
generator, so a resumed run sees the same ones), batched with their dense targets. Validation
runs on fixed canvases of the validation digits, an equal share of every layout group of the test
(`dla.data.canvas.LAYOUTS`): the loss, mAP@0.5 and F1 at raw score 0.3. The test first calibrates
on the validation canvases (Platt scaling, then the threshold of best F1 in [0.3, 0.95]; see
`dla.analysis.dense_detect`), then scores every layout group of canvases of test digits at that
threshold, each apart and all together. Every process evaluates everything (no sharding): the
canvases are few and the detector is fast, and so every process agrees without communication.
"""

from __future__ import annotations

from typing import Any

import torch

from dla.analysis.dense_detect import (best_f1_threshold, calibrate, dense_loss, dense_targets, detect_dense,
                                       fit_calibration)
from dla.analysis.detect import Detections, detection_metrics, match_flags
from dla.data.batches import to_unit_float
from dla.data.canvas import LAYOUTS, Canvases, eval_canvases, layout_canvases, training_canvases
from dla.device import autocast, prepare_input
from dla.train.tasks import EpochTask

VAL_SEED = 7  # the validation canvases' seed (plus the layout's index), from validation digits
RAW_THRESHOLD = 0.3  # the validation F1's threshold on raw scores (before calibration exists)
CANDIDATES = 0.02  # the lowest (calibrated) score kept for calibration, the threshold search and the reliability plot


def _flags(preds: list[Detections], canv: Canvases) -> list[torch.Tensor]:
    return [match_flags(p, b, lab) for p, b, lab in zip(preds, canv.boxes, canv.labels)]


def _keep(preds: list[Detections], threshold: float) -> list[Detections]:
    return [Detections(p.boxes[p.scores >= threshold], p.labels[p.scores >= threshold], p.scores[p.scores >= threshold])
            for p in preds]


class DetectionTask(EpochTask):
    metrics = ("loss", "map50", "f1", "precision", "recall")

    def __init__(self, data: Any, dcfg: Any, classes: int):
        self.data, self.dcfg, self.classes = data, dcfg, classes
        share = -(-dcfg.val_canvases // len(LAYOUTS))
        self.val = {name: layout_canvases(data.val.x, data.val.y, layout, share, VAL_SEED + i)
                    for i, (name, layout) in enumerate(LAYOUTS.items())}
        self.detector: dict[str, Any] = {}  # the calibration and default threshold, after the test
        self.reliability: tuple[torch.Tensor, torch.Tensor] | None = None  # the test's (scores, right)
        self.examples: tuple[Canvases, list[Detections]] | None = None

    def train_size(self) -> int:
        return self.dcfg.canvases

    def batches(self, cfg, generator, accelerator, steps):
        d = self.dcfg
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        canv = training_canvases(self.data.train.x, self.data.train.y, d.canvases, d.canvas, tuple(d.digits),
                                 tuple(d.digit_sizes), d.gap, d.packed, seed)
        rank, world = accelerator.process_index, accelerator.num_processes
        perm = torch.randperm(len(canv), generator=generator).tolist()
        device = accelerator.device
        for start in range(0, steps * cfg.batch_size, cfg.batch_size):
            rows = perm[start : start + cfg.batch_size][rank::world]
            targets = dense_targets([canv.boxes[i] for i in rows], [canv.labels[i] for i in rows], self.classes,
                                    d.canvas, d.canvas)
            yield to_unit_float(canv.images[rows]).to(device), tuple(t.to(device) for t in targets)

    def step(self, model, batch, cfg, unwrapped, generator):
        x, targets = batch
        with autocast(x.device, cfg.precision):
            out = model(prepare_input(x, cfg.channels_last))
        loss, parts = dense_loss(out, *targets)
        n = torch.tensor(float(len(x)), device=x.device)
        return loss, {"loss": loss.detach() * n, "n": n, **{k: v * n for k, v in parts.items()}}

    def train_metrics(self, sums, model, accelerator, cfg):
        return {k: float(v / sums["n"]) for k, v in sums.items() if k != "n"}

    def _raw(self, net, canv: Canvases, cfg, threshold: float, calibration=None) -> list[Detections]:
        return detect_dense(net, to_unit_float(canv.images), threshold, calibration, precision=cfg.precision,
                            batch_size=cfg.eval_batch_size)

    def _loss(self, net, canv: Canvases, cfg) -> tuple[float, int]:
        total, n = 0.0, 0
        size = canv.images.shape[-1]
        with torch.inference_mode():
            for start in range(0, len(canv), cfg.eval_batch_size):
                stop = min(start + cfg.eval_batch_size, len(canv))
                x = to_unit_float(canv.images[start:stop])
                with autocast(x.device, cfg.precision):
                    out = net(prepare_input(x, cfg.channels_last))
                targets = dense_targets(canv.boxes[start:stop], canv.labels[start:stop], self.classes, size, size)
                total += float(dense_loss(out.cpu(), *targets)[0]) * (stop - start)
                n += stop - start
        return total, n

    def evaluate(self, model, split, accelerator, cfg):
        net = accelerator.unwrap_model(model)
        net.eval()
        total, n, preds, boxes, labels = 0.0, 0, [], [], []
        for canv in self.val.values():
            t, k = self._loss(net, canv, cfg)
            total, n = total + t, n + k
            preds += self._raw(net, canv, cfg, RAW_THRESHOLD)
            boxes, labels = boxes + canv.boxes, labels + canv.labels
        m = detection_metrics(preds, boxes, labels)
        return {"loss": total / n, "map50": m["map50"], "f1": m["f1"], "precision": m["precision"], "recall": m["recall"]}

    def calibrate(self, net, cfg) -> dict[str, Any]:
        """Platt scaling and the default threshold from the validation canvases (see the module's docstring)."""
        scores, flags, digits = [], [], 0
        for canv in self.val.values():
            preds = self._raw(net, canv, cfg, CANDIDATES)
            scores += [p.scores for p in preds]
            flags += _flags(preds, canv)
            digits += sum(len(lab) for lab in canv.labels)
        a, b = fit_calibration(torch.cat(scores), torch.cat(flags))
        calibrated = [calibrate(s, (a, b)) for s in scores]
        threshold, f1 = best_f1_threshold(calibrated, flags, digits)
        free, free_f1 = best_f1_threshold(calibrated, flags, digits, low=CANDIDATES)
        return {"calibration": [a, b], "threshold": threshold, "val_f1": f1, "unconstrained_threshold": free,
                "unconstrained_val_f1": free_f1, "val_canvases": sum(len(c) for c in self.val.values())}

    def test(self, model, accelerator, cfg):
        net = accelerator.unwrap_model(model)
        net.eval()
        self.detector = self.calibrate(net, cfg)
        calibration, threshold = tuple(self.detector["calibration"]), self.detector["threshold"]
        out: dict[str, float] = {}
        every: list[Detections] = []
        boxes, labels, scores, flags = [], [], [], []
        for name in LAYOUTS:
            canv = eval_canvases(self.data.test.x, self.data.test.y, name, self.dcfg.test_canvases)
            low = self._raw(net, canv, cfg, CANDIDATES, calibration)
            scores += [p.scores for p in low]
            flags += _flags(low, canv)
            preds = _keep(low, threshold)
            m = detection_metrics(preds, canv.boxes, canv.labels)
            out.update({f"{k}_{name}": m[k] for k in ("f1", "map50", "precision", "recall")})
            every += preds
            boxes, labels = boxes + canv.boxes, labels + canv.labels
            if name == "crowded":
                self.examples = (canv, preds)
        m = detection_metrics(every, boxes, labels)
        out.update({k: m[k] for k in ("f1", "map50", "precision", "recall", "digits", "detections")})
        out["threshold"] = threshold
        self.reliability = (torch.cat(scores), torch.cat(flags))
        return out

    def summary(self, history):
        return {"layouts": {name: layout.what for name, layout in LAYOUTS.items()}, "detector": self.detector}

    def shown(self, metrics):
        return {k: v for k, v in metrics.items() if k in ("loss", "map50", "f1")}
