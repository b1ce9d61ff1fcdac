"""Class activation maps (Lab 1, exercise 2.3): which pixels made a CNN decide, and a number for it.

Methods (`METHODS`):

- `cam`, classical CAM (Zhou et al. 2016), exact for a net whose head is global average pooling then
  one linear layer (`model.head=gap`): the map of class c is sum_k w_ck A_k over the last conv
  block's features A, since the logit is its average plus the bias. dla's own: it is the lab's
  exercise and a few lines long.
- `gradcam`, `gradcam++`, `scorecam` from the field's library `grad-cam` (pytorch-grad-cam), on the
  same layer; they work for any CNN, `head=original` included (there on the last map before the
  head's 2x2 max-pool).

Every method's map goes through the same steps as the library's: ReLU, bilinear upsampling to the
input and min-max scaling to [0, 1]. On a GAP net Grad-CAM's channel weights are w_ck / (h w), so
its map equals CAM's (tested).

The pointing game (Zhang et al. 2016) counts a canvas as a hit when the map's maximum falls inside
the digit's ink box; dla pastes MNIST test digits into seeded black canvases (dla.data.canvas) and
compares each method with a centre-point and a random-point baseline.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dla.errors import DlaError
from dla.models.cnn import CNN



def cnn_of(model: nn.Module, run_label: str = "this run") -> CNN:
    net = getattr(model, "net", None)
    if not isinstance(net, CNN):
        kind = type(net).__name__ if net is not None else type(model).__name__
        raise DlaError(f"dla cam needs a CNN run (model.name=cnn); {run_label} is a {kind.lower()}")
    return net


def has_gap_head(model: nn.Module) -> bool:
    return isinstance(cnn_of(model).head[0], nn.AdaptiveAvgPool2d)


def target_layer(model: nn.Module) -> nn.Module:
    """The layer every method reads: the last block's output for a GAP net (what the average pools);
    with the original head, the last block's final ReLU, before its adaptive max-pool to 2x2, so that
    the map keeps the last stage's resolution."""
    last = cnn_of(model).features[-1]
    return last if has_gap_head(model) else last.body[-2]


def check_method(model: nn.Module, method: str) -> None:
    if method not in METHODS:
        raise DlaError(f"--method {method}: unknown; valid: {', '.join(METHODS)}")
    if method == "cam" and not has_gap_head(model):
        raise DlaError("--method cam needs a global-average-pool head (model.head=gap); "
                       "this run has head=original: use --method gradcam")


def class_activation_maps(model: nn.Module, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Raw CAM (B, h, w) at the last block's resolution: sum_k w_ck A_k for each image's class."""
    net = cnn_of(model)
    if not has_gap_head(model):
        raise DlaError("classical CAM needs a global-average-pool head (model.head=gap)")
    with torch.no_grad():
        features = net.features(model.normalize(x))
        weights = net.head[-1].weight[classes]  # (B, K)
        return torch.einsum("bkhw,bk->bhw", features, weights)


def _scale(maps: torch.Tensor) -> torch.Tensor:
    """Per map: minus its minimum, over its maximum (the library's scale_cam_image)."""
    flat = maps.flatten(1)
    flat = flat - flat.min(1, keepdim=True).values
    return (flat / (1e-7 + flat.max(1, keepdim=True).values)).view_as(maps)


def heatmaps(model: nn.Module, x: torch.Tensor, classes: torch.Tensor, method: str, batch_size: int = 64) -> torch.Tensor:
    """(B, H, W) maps in [0, 1] for images x (B, C, H, W) in [0, 1] and one class per image."""
    check_method(model, method)
    model.eval()
    out = []
    for start in range(0, len(x), batch_size):
        xb, cb = x[start : start + batch_size], classes[start : start + batch_size]
        out.append(METHODS[method](model, xb, cb))
    return torch.cat(out)


def _cam_maps(model: nn.Module, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    raw = class_activation_maps(model, x, classes).clamp(min=0)
    return _scale(F.interpolate(raw[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0])


def _library(name: str):
    """A method of the grad-cam library (pytorch-grad-cam), by its class name there."""
    return lambda model, x, classes: torch.from_numpy(_library_maps(model, x, classes, name)).float()


def _library_maps(model: nn.Module, x: torch.Tensor, classes: torch.Tensor, name: str):
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cls = getattr(pytorch_grad_cam, name)
    targets = [ClassifierOutputTarget(int(c)) for c in classes]
    with cls(model=model, target_layers=[target_layer(model)]) as cam:
        cam.batch_size = 128  # Score-CAM: masked copies per forward pass
        with contextlib.redirect_stderr(io.StringIO()):  # Score-CAM draws a progress bar per image
            return cam(input_tensor=x, targets=targets)


def argmax_points(maps: torch.Tensor) -> torch.Tensor:
    """(B, 2) pixel (x, y) of each map's maximum."""
    flat = maps.flatten(1).argmax(1)
    w = maps.shape[-1]
    return torch.stack([flat % w, flat // w], 1)


def inside(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """(B,) bool: point (x, y) inside box (x0, y0, x1, y1), x1 and y1 exclusive."""
    px, py = points[:, 0].float(), points[:, 1].float()
    return (boxes[:, 0] <= px) & (px < boxes[:, 2]) & (boxes[:, 1] <= py) & (py < boxes[:, 3])


def pointing_game(model: nn.Module, images: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor,
                  methods: Sequence[str], seed: int = 0, progress: bool = True) -> dict[str, float]:
    """Share of canvases whose map maximum (of the true class) is inside the box, per method and baseline.

    images: float (N, C, S, S) in [0, 1]; boxes (N, 4); labels (N,).
    """
    n, _, h, w = images.shape
    hits: dict[str, float] = {}
    for method in methods:
        maps = heatmaps(model, images, labels, method)
        hits[method] = float(inside(argmax_points(maps), boxes).float().mean())
        if progress:
            print(f"  {method:10s} {100 * hits[method]:.1f}%", flush=True)
    centre = torch.tensor([[w // 2, h // 2]]).expand(n, 2)
    hits["centre point"] = float(inside(centre, boxes).float().mean())
    g = torch.Generator().manual_seed(seed)
    random_points = torch.stack([torch.randint(0, w, (n,), generator=g), torch.randint(0, h, (n,), generator=g)], 1)
    hits["random point"] = float(inside(random_points, boxes).float().mean())
    return hits


# Every method by name, the one list (`dla cam --method`, its --help and the pointing game read it):
# (model, x, classes) -> (B, H, W) maps in [0, 1].
METHODS = {"cam": _cam_maps, "gradcam": _library("GradCAM"), "gradcam++": _library("GradCAMPlusPlus"),
           "scorecam": _library("ScoreCAM")}
