"""Digits found in large images by a classifier made fully convolutional (Lab 1, exercise 2.2).

`detect` runs the `FCN` (dla.models.fcn) over an image pyramid: one level per digit size to look for
(the image resized so that a digit of that size fills the training window), and at each level on
shifted copies of the image, `step` pixels apart ("shift and stitch"), so that windows are `step`
px apart rather than the net's stride. Every window gives class probabilities; a window is a
candidate when its best digit class reaches `threshold` (with a background class, the digits
compete with it inside the softmax). Non-maximum suppression from torchvision.ops keeps the peaks:
class-agnostic, because pasted digits do not overlap, so two boxes on one place are one digit.

Scoring (`match`, `detection_metrics`): a detection is right when its class is right and its box
overlaps an unmatched true box with IoU >= 0.5 (IoU from torchvision.ops); greedy by score, as
COCO does. mAP@0.5 comes from torchmetrics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dla.models.fcn import FCN

DEFAULT_SIZES = (20, 24, 28, 34, 40)


@dataclass
class Detections:
    boxes: torch.Tensor  # (k, 4) x0, y0, x1, y1 in the image's pixels
    labels: torch.Tensor  # (k,)
    scores: torch.Tensor  # (k,)


def window_probs(fcn: FCN, image: torch.Tensor, size: float, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes (M, 4) in the image's pixels and class probabilities (M, K) of every window at the pyramid
    level where a `size`-px object fills the window; windows `step` px apart at that level."""
    wh, ww = fcn.window
    _, h, w = image.shape
    factor = wh / size
    nh, nw = max(wh, round(h * factor)), max(ww, round(w * factor))
    level = F.interpolate(image[None], size=(nh, nw), mode="bilinear", antialias=factor < 1, align_corners=False)
    stride = fcn.stride
    offsets = list(range(0, stride, step))
    # every shifted copy padded to one size, so that all of them go through the net in one batch
    padded = F.pad(level, (0, stride, 0, stride))
    crops = torch.cat([padded[..., dy : dy + nh, dx : dx + nw] for dy in offsets for dx in offsets])
    with torch.no_grad():
        probs = fcn(crops).float().softmax(1)  # (O, K, gh, gw)
    gh, gw = probs.shape[-2:]
    oy = torch.tensor([dy for dy in offsets for _ in offsets], dtype=torch.float32)
    ox = torch.tensor([dx for _ in offsets for dx in offsets], dtype=torch.float32)
    ys = oy[:, None, None] + stride * torch.arange(gh, dtype=torch.float32)[None, :, None]  # (O, gh, 1)
    xs = ox[:, None, None] + stride * torch.arange(gw, dtype=torch.float32)[None, None, :]  # (O, 1, gw)
    ys, xs = ys.expand(-1, gh, gw), xs.expand(-1, gh, gw)
    valid = (ys + wh <= nh) & (xs + ww <= nw)  # windows wholly inside the level, not in the padding
    sy, sx = h / nh, w / nw
    boxes = torch.stack([xs * sx, ys * sy, (xs + ww) * sx, (ys + wh) * sy], -1)[valid]
    return boxes, probs.permute(0, 2, 3, 1)[valid]


def detect(fcn: FCN, image: torch.Tensor, background: int | None, threshold: float = 0.005, step: int = 4,
           sizes: tuple[int, ...] = DEFAULT_SIZES, nms_iou: float = 0.3) -> Detections:
    """Digits in one image (C, H, W) in [0, 1]: boxes, classes and scores after NMS, best first."""
    from torchvision.ops import nms

    found = [window_probs(fcn, image, s, step) for s in sizes]
    boxes = torch.cat([b for b, _ in found])
    probs = torch.cat([p for _, p in found])
    if background is not None:
        probs = torch.cat([probs[:, :background], probs[:, background + 1 :]], 1)
    scores, labels = probs.max(1)
    if background is not None:
        labels = labels + (labels >= background).long()  # back to the run's class indices
    keep = scores >= threshold
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    kept = nms(boxes, scores, nms_iou)
    return Detections(boxes[kept], labels[kept], scores[kept])


def heat_grid(fcn: FCN, image: torch.Tensor, step: int) -> tuple[torch.Tensor, tuple[float, float, float, float]]:
    """Class probabilities (K, ny, nx) of the windows at the training scale, `step` px apart, and the
    extent (left, right, bottom, top) of their centres, for drawing over the image."""
    wh, ww = fcn.window
    _, h, w = image.shape
    boxes, probs = window_probs(fcn, image, float(wh), step)
    ny, nx = (h - wh) // step + 1, (w - ww) // step + 1
    iy = (boxes[:, 1] / step).round().long().clamp(0, ny - 1)
    ix = (boxes[:, 0] / step).round().long().clamp(0, nx - 1)
    grid = torch.zeros(probs.shape[1], ny, nx)
    grid[:, iy, ix] = probs.T
    extent = (ww / 2 - step / 2, ww / 2 + (nx - 0.5) * step, wh / 2 + (ny - 0.5) * step, wh / 2 - step / 2)
    return grid, extent


def match_flags(pred: Detections, gt_boxes: torch.Tensor, gt_labels: torch.Tensor, iou: float = 0.5) -> torch.Tensor:
    """Whether each detection of one image (in `pred`'s order) is right: the right class and IoU >= `iou`
    with a true box no better-scored detection took (greedy by score, as COCO)."""
    from torchvision.ops import box_iou

    right = torch.zeros(len(pred.scores), dtype=torch.bool)
    if len(pred.scores) == 0 or len(gt_labels) == 0:
        return right
    overlaps = box_iou(pred.boxes, gt_boxes)
    taken = torch.zeros(len(gt_labels), dtype=torch.bool)
    for i in pred.scores.argsort(descending=True, stable=True).tolist():
        ok = (~taken) & (gt_labels == pred.labels[i]) & (overlaps[i] >= iou)
        if ok.any():
            taken[int(torch.where(ok, overlaps[i], torch.tensor(-1.0)).argmax())] = True
            right[i] = True
    return right


def match(pred: Detections, gt_boxes: torch.Tensor, gt_labels: torch.Tensor, iou: float = 0.5) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives) of one image, greedy by score."""
    tp = int(match_flags(pred, gt_boxes, gt_labels, iou).sum())
    return tp, len(pred.scores) - tp, len(gt_labels) - tp


def detection_metrics(preds: list[Detections], gt_boxes: list[torch.Tensor], gt_labels: list[torch.Tensor]) -> dict[str, float]:
    """Precision, recall and F1 at IoU >= 0.5 with the right class, and mAP@0.5 (torchmetrics), over images."""
    from torchmetrics.detection import MeanAveragePrecision

    tp = fp = fn = 0
    for p, b, l in zip(preds, gt_boxes, gt_labels):
        a, f, n = match(p, b, l)
        tp, fp, fn = tp + a, fp + f, fn + n
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    metric = MeanAveragePrecision(box_format="xyxy", iou_thresholds=[0.5])
    metric.update([{"boxes": p.boxes, "scores": p.scores, "labels": p.labels} for p in preds],
                  [{"boxes": b, "labels": l} for b, l in zip(gt_boxes, gt_labels)])
    m = metric.compute()
    return {"precision": precision, "recall": recall, "f1": f1, "map50": float(m["map"]),
            "tp": tp, "fp": fp, "fn": fn, "digits": tp + fn, "detections": tp + fp}
