"""The dense detector's targets, loss, decoding and calibration (`dla train lab1-fcn-dense`).

The net (`dla.models.detector.DenseDetector`) predicts, for every cell of a stride-4 grid, one
heatmap logit per class, a log-width and log-height, and the centre's offset inside the cell.

Targets (`dense_targets`), from the known boxes (x0, y0, x1, y1) of a canvas:
- a digit's centre (cx, cy) = ((x0 + x1) / 2, (y0 + y1) / 2) falls in cell (i, j) =
  (floor(cy / 4), floor(cx / 4)); there its class's heatmap is 1, and around it a Gaussian
  exp(-d^2 / (2 sigma^2)) of the distance in cells, sigma = max(0.5, side / 4 / 6) (a digit's
  neighbouring cells are not penalised as hard as background); classes overlap by maximum;
- at (i, j) only: size = (log(w / 4), log(h / 4)) and offset = (cx / 4 - j, cy / 4 - i), in [0, 1).

Loss (`dense_loss`): CenterNet's penalty-reduced focal loss on the heatmaps (alpha 2, beta 4),
summed and divided by the number of digits, plus the L1 losses of size and offset at the centres.

Decoding (`decode`): sigmoid heatmaps, local maxima (a 3x3 max-pool, as CenterNet), the `top_k`
best peaks over all classes, box = centre +- size / 2, then class-agnostic NMS (torchvision.ops):
pasted digits do not overlap, so two boxes on one place are one digit.

Calibration (`fit_calibration`): a peak's heatmap value is a focal-loss score, not the probability
that the detection is right. On validation canvases every peak is matched to the true boxes and a
logistic regression of "right" on logit(score) (Platt scaling) maps scores to probabilities, so
that the threshold means what it says; the default threshold is then the one of best validation F1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dla.models.detector import STRIDE

FOCAL_ALPHA, FOCAL_BETA = 2.0, 4.0
SIZE_WEIGHT, OFFSET_WEIGHT = 1.0, 1.0
MIN_SIGMA = 0.5


def dense_targets(boxes: list[torch.Tensor], labels: list[torch.Tensor], classes: int, height: int, width: int,
                  stride: int = STRIDE) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Heatmaps (B, classes, gh, gw), sizes (B, 2, gh, gw), offsets (B, 2, gh, gw) and the centre mask
    (B, gh, gw) of a batch of canvases of height x width px, from each canvas's boxes and labels."""
    gh, gw = -(-height // stride), -(-width // stride)
    b = len(boxes)
    heat = torch.zeros(b, classes, gh, gw)
    size = torch.zeros(b, 2, gh, gw)
    offset = torch.zeros(b, 2, gh, gw)
    mask = torch.zeros(b, gh, gw, dtype=torch.bool)
    ii = torch.arange(gh, dtype=torch.float32)[:, None]
    jj = torch.arange(gw, dtype=torch.float32)[None, :]
    for n, (bx, lab) in enumerate(zip(boxes, labels)):
        for (x0, y0, x1, y1), k in zip(bx.tolist(), lab.tolist()):
            cx, cy = (x0 + x1) / 2 / stride, (y0 + y1) / 2 / stride
            i, j = min(int(math.floor(cy)), gh - 1), min(int(math.floor(cx)), gw - 1)
            sigma = max(MIN_SIGMA, min(x1 - x0, y1 - y0) / stride / 6)
            g = torch.exp(-((ii - i) ** 2 + (jj - j) ** 2) / (2 * sigma**2))
            heat[n, k] = torch.maximum(heat[n, k], g)
            size[n, :, i, j] = torch.tensor([math.log((x1 - x0) / stride), math.log((y1 - y0) / stride)])
            offset[n, :, i, j] = torch.tensor([cx - j, cy - i])
            mask[n, i, j] = True
    return heat, size, offset, mask


def dense_loss(out: torch.Tensor, heat: torch.Tensor, size: torch.Tensor, offset: torch.Tensor,
               mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The training loss of a head output (B, classes + 4, gh, gw) against `dense_targets`, and its parts."""
    k = heat.shape[1]
    out = out.float()
    logits = out[:, :k]
    log_p, log_q = F.logsigmoid(logits), F.logsigmoid(-logits)  # log p, log (1 - p)
    p = log_p.exp()
    pos = heat == 1
    pos_loss = -((1 - p) ** FOCAL_ALPHA * log_p)[pos].sum()
    neg_loss = -(((1 - heat) ** FOCAL_BETA) * p**FOCAL_ALPHA * log_q)[~pos].sum()
    digits = pos.sum().clamp(min=1)
    heat_loss = (pos_loss + neg_loss) / digits
    cells = out[:, k:].permute(0, 2, 3, 1)[mask]  # (digits, 4)
    if len(cells):
        size_loss = F.l1_loss(cells[:, :2], size.permute(0, 2, 3, 1)[mask])
        offset_loss = F.l1_loss(cells[:, 2:], offset.permute(0, 2, 3, 1)[mask])
    else:
        size_loss = offset_loss = out.sum() * 0
    loss = heat_loss + SIZE_WEIGHT * size_loss + OFFSET_WEIGHT * offset_loss
    return loss, {"heat_loss": heat_loss.detach(), "size_loss": size_loss.detach(), "offset_loss": offset_loss.detach()}


def calibrate(scores: torch.Tensor, calibration: tuple[float, float] | None) -> torch.Tensor:
    """sigmoid(a * logit(score) + b): raw heatmap scores as probabilities of being right (None: as they are)."""
    if calibration is None:
        return scores
    a, b = calibration
    return torch.sigmoid(a * torch.logit(scores.double(), eps=1e-12) + b).to(scores.dtype)


def decode(out: torch.Tensor, classes: int, threshold: float, top_k: int = 100, nms_iou: float = 0.5,
           calibration: tuple[float, float] | None = None, stride: int = STRIDE,
           image_size: tuple[int, int] | None = None) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per image of a head output (B, classes + 4, gh, gw): boxes (n, 4) x0, y0, x1, y1 in pixels (clipped
    to `image_size` (h, w) when given), labels (n,) and scores (n,) in [0, 1], best first; the `top_k`
    heatmap peaks whose (calibrated) score reaches `threshold`, after class-agnostic NMS at `nms_iou`."""
    from torchvision.ops import clip_boxes_to_image, nms

    out = out.float().contiguous()  # a channels_last map would make every step below copy
    b, _, gh, gw = out.shape
    heat = torch.sigmoid(out[:, :classes])
    peaks = heat * (heat == F.max_pool2d(heat, 3, 1, 1))
    scores, idx = peaks.flatten(1).topk(min(top_k, classes * gh * gw), dim=1)
    label, cell = idx // (gh * gw), idx % (gh * gw)
    i, j = cell // gw, cell % gw
    reg = out[:, classes:].flatten(2)  # (B, 4, gh * gw)
    picked = torch.gather(reg, 2, cell[:, None, :].expand(-1, 4, -1))  # (B, 4, top_k)
    w, h = picked[:, 0].exp() * stride, picked[:, 1].exp() * stride
    cx, cy = (j + picked[:, 2]) * stride, (i + picked[:, 3]) * stride
    boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
    scores = calibrate(scores, calibration)
    found = []
    for n in range(b):
        keep = scores[n] >= threshold
        bx, lab, sc = boxes[n][keep], label[n][keep], scores[n][keep]
        if image_size is not None:
            bx = clip_boxes_to_image(bx, image_size)
        kept = nms(bx, sc, nms_iou)
        found.append((bx[kept], lab[kept], sc[kept]))
    return found


def fit_calibration(scores: torch.Tensor, right: torch.Tensor) -> tuple[float, float]:
    """(a, b) of the logistic regression of `right` (bool) on logit(score) (Platt scaling), by Newton's
    method on the mean log-loss with a small ridge; (1, 0), the identity, when one outcome is missing."""
    if len(scores) == 0 or bool(right.all()) or not bool(right.any()):
        return 1.0, 0.0
    z = torch.logit(scores.double(), eps=1e-12)
    y = right.double()
    x = torch.stack([z, torch.ones_like(z)], 1)
    theta = torch.tensor([1.0, 0.0], dtype=torch.float64)
    ridge = 1e-6 * torch.eye(2, dtype=torch.float64)
    for _ in range(100):
        p = torch.sigmoid(x @ theta)
        grad = x.T @ (p - y) / len(y) + ridge @ theta
        hess = (x.T * (p * (1 - p))) @ x / len(y) + ridge
        step = torch.linalg.solve(hess, grad)
        theta = theta - step
        if float(step.abs().max()) < 1e-10:
            break
    a, b = float(theta[0]), float(theta[1])
    return (a, b) if a > 0 and math.isfinite(a) and math.isfinite(b) else (1.0, 0.0)


def detect_dense(net: torch.nn.Module, images: torch.Tensor, threshold: float, calibration: tuple[float, float] | None,
                 nms_iou: float = 0.5, precision: str = "fp32", batch_size: int = 50,
                 top_k: int = 100) -> list["Detections"]:
    """Digits in images (N, C, H, W) in [0, 1] of one size: one forward pass per batch of images."""
    from dla.analysis.detect import Detections
    from dla.device import autocast

    net.eval()
    found: list[Detections] = []
    h, w = images.shape[-2:]
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            xb = images[start : start + batch_size].contiguous(memory_format=torch.channels_last)
            with autocast(xb.device, precision):
                out = net(xb)
            found += [Detections(*d) for d in decode(out.cpu(), net.classes, threshold, top_k, nms_iou, calibration,
                                                     image_size=(h, w))]
    return found


def best_f1_threshold(scores: list[torch.Tensor], flags: list[torch.Tensor], digits: int, low: float = 0.3,
                      high: float = 0.95, step: float = 0.01) -> tuple[float, float]:
    """(threshold, F1) of the best F1 over thresholds low, low + step, ..., high, from every detection's score and
    whether it is right (over images), and the number of true digits. A detection's rightness does not depend on
    the threshold (greedy matching by score takes the same boxes among those kept)."""
    s, r = torch.cat(scores), torch.cat(flags)
    best = (low, -1.0)
    for i in range(int(round((high - low) / step)) + 1):
        t = round(low + i * step, 10)
        kept = s >= t
        tp = int(r[kept].sum())
        f1 = 2 * tp / (int(kept.sum()) + digits) if digits else 0.0
        if f1 > best[1] + 1e-12:
            best = (t, f1)
    return best
