"""Digits pasted into larger black images, seeded, with their boxes known (Lab 1, exercises 2.2 and 2.3).

Three uses, all built from the 28x28 grey images of MNIST or Fashion-MNIST (uint8, N x 1 x 28 x 28):

- `pointing_canvases`: one image at a random place in a 64x64 (or any size) black canvas; the box is
  the tight box of its ink, for the pointing game of `dla cam --pointing-game`.
- `detection_canvases`: 1 to 5 non-overlapping digits of 20-40 px on a 128x128 canvas; a digit's box
  is the square it was pasted into (the MNIST frame scaled to s px, the digit centred in it as
  MNIST centres it), which is what a 28x28 window classifier sees. For `dla detect --eval`.
- `with_background`: a training set for the fully-convolutional detector: the digits, slightly
  rescaled and shifted, plus as many crops of class "background": empty, off-centre digits (what
  a window next to a digit sees), digits far too large and far too small (what the wrong level of
  the image pyramid sees).

Boxes are (x0, y0, x1, y1) in pixels with x1, y1 exclusive: pixel (px, py) is inside when
x0 <= px < x1 and y0 <= py < y1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

FRAME = 28  # the side of an MNIST-family image


@dataclass
class Canvases:
    images: torch.Tensor  # uint8 (N, 1, S, S)
    boxes: list[torch.Tensor]  # per canvas, float (k, 4) x0, y0, x1, y1
    labels: list[torch.Tensor]  # per canvas, int64 (k,)

    def __len__(self) -> int:
        return len(self.images)


def _uniform(n: int, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g)


def affine_digits(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Each 28x28 image scaled about its centre by `scale` (N,) and moved by `shift` (N, 2) pixels
    (x, y), in its own 28x28 frame (what leaves the frame is cut, what comes in is black). uint8 in and out."""
    n, _, h, w = x.shape
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / scale
    theta[:, 0, 2] = -shift[:, 0] * 2.0 / w / scale
    theta[:, 1, 2] = -shift[:, 1] * 2.0 / h / scale
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8)


def resize_digit(x: torch.Tensor, size: int) -> torch.Tensor:
    """One (1, 28, 28) uint8 image resized to (1, size, size), antialiased when shrinking."""
    if size == x.shape[-1]:
        return x
    out = F.interpolate(x[None].float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    return out.round().clamp(0, 255).to(torch.uint8)


def ink_box(patch: torch.Tensor, x0: int, y0: int) -> torch.Tensor:
    """The tight box (x0, y0, x1, y1) of the non-zero pixels of a (1, h, w) patch placed at (x0, y0)."""
    ys, xs = torch.nonzero(patch[0] > 0, as_tuple=True)
    if len(ys) == 0:  # an empty image: its whole frame
        return torch.tensor([x0, y0, x0 + patch.shape[-1], y0 + patch.shape[-2]], dtype=torch.float32)
    return torch.tensor([x0 + int(xs.min()), y0 + int(ys.min()), x0 + int(xs.max()) + 1, y0 + int(ys.max()) + 1],
                        dtype=torch.float32)


def paste_single(x: torch.Tensor, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image of `x` at a uniformly random place in its own black size x size canvas.
    Returns the canvases (N, C, size, size) and the ink boxes (N, 4)."""
    n, c, h, w = x.shape
    if size < max(h, w):
        raise ValueError(f"a canvas of {size} px cannot hold {h}x{w} images")
    oy = torch.randint(0, size - h + 1, (n,), generator=generator)
    ox = torch.randint(0, size - w + 1, (n,), generator=generator)
    out = torch.zeros(n, c, size, size, dtype=x.dtype)
    boxes = torch.empty(n, 4)
    for i in range(n):
        y0, x0 = int(oy[i]), int(ox[i])
        out[i, :, y0 : y0 + h, x0 : x0 + w] = x[i]
        boxes[i] = ink_box(x[i, :1], x0, y0)
    return out, boxes


def pointing_canvases(x: torch.Tensor, y: torch.Tensor, n: int, size: int = 64, seed: int = 0) -> Canvases:
    """`n` canvases of `size` px, each with one image of (x, y) (drawn in order) at a seeded random place."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.arange(n) % len(y)
    images, boxes = paste_single(x[idx], size, g)
    return Canvases(images, [b[None] for b in boxes], [y[i : i + 1] for i in idx.tolist()])


def _overlaps(box: tuple[int, int, int, int], others: list[tuple[int, int, int, int]], gap: int = 0) -> bool:
    """Whether `box` comes closer than `gap` px to any of `others` (gap 0: shares a pixel with one)."""
    x0, y0, x1, y1 = box
    return any(x0 - gap < b[2] and b[0] < x1 + gap and y0 - gap < b[3] and b[1] < y1 + gap for b in others)


PLACEMENTS = ("uniform", "packed")


def _place(s: int, size: int, frames: list[tuple[int, int, int, int]], gap: int, placement: str,
           g: torch.Generator) -> tuple[int, int]:
    """A top-left corner for an s-px frame: uniform over the canvas, or ("packed", when there are frames
    already) `gap` px beside a random one of them, on a random side, at a random offset along it."""
    if placement == "packed" and frames:
        bx0, by0, bx1, by1 = frames[int(torch.randint(0, len(frames), (1,), generator=g))]
        side = int(torch.randint(0, 4, (1,), generator=g))
        along = int(torch.randint(-s + 1, (bx1 - bx0 if side < 2 else by1 - by0), (1,), generator=g))
        if side == 0:  # right of it
            return bx1 + gap, by0 + along
        if side == 1:  # left of it
            return bx0 - gap - s, by0 + along
        if side == 2:  # below it
            return bx0 + along, by1 + gap
        return bx0 + along, by0 - gap - s  # above it
    return int(torch.randint(0, size - s + 1, (1,), generator=g)), int(torch.randint(0, size - s + 1, (1,), generator=g))


def detection_canvases(x: torch.Tensor, y: torch.Tensor, n: int = 500, size: int = 128, count: tuple[int, int] = (1, 5),
                       sizes: tuple[int, int] = (20, 40), seed: int = 0, gap: int = 0,
                       placement: str = "uniform") -> Canvases:
    """`n` canvases of `size` px, each with count[0]..count[1] digits of x (random ones) at sizes[0]..sizes[1] px,
    their frames at least `gap` px apart (0: not overlapping). A digit that finds no free place in 100 tries
    is left out. `placement` "packed" puts each digit after the first right next to an earlier one, `gap` px
    from it (a crowded layout); "uniform" anywhere."""
    if not (1 <= count[0] <= count[1]) or not (1 <= sizes[0] <= sizes[1] <= size):
        raise ValueError(f"bad canvas layout: count {count}, sizes {sizes}, canvas {size}")
    if gap < 0 or placement not in PLACEMENTS:
        raise ValueError(f"bad canvas layout: gap {gap}, placement {placement!r}")
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    all_boxes, all_labels = [], []
    for i in range(n):
        k = int(torch.randint(count[0], count[1] + 1, (1,), generator=g))
        frames: list[tuple[int, int, int, int]] = []
        labels: list[int] = []
        for _ in range(k):
            for _attempt in range(100):
                s = int(torch.randint(sizes[0], sizes[1] + 1, (1,), generator=g))
                x0, y0 = _place(s, size, frames, gap, placement, g)
                if 0 <= x0 <= size - s and 0 <= y0 <= size - s and not _overlaps((x0, y0, x0 + s, y0 + s), frames, gap):
                    break
            else:
                continue
            j = int(torch.randint(0, len(y), (1,), generator=g))
            images[i, :, y0 : y0 + s, x0 : x0 + s] = resize_digit(x[j, :1], s)
            frames.append((x0, y0, x0 + s, y0 + s))
            labels.append(int(y[j]))
        all_boxes.append(torch.tensor(frames, dtype=torch.float32).reshape(-1, 4))
        all_labels.append(torch.tensor(labels, dtype=torch.long))
    return Canvases(images, all_boxes, all_labels)


@dataclass(frozen=True)
class Layout:
    """A kind of detection canvas: side, digits per canvas, digit sizes, gap between frames, placement."""

    size: int
    count: tuple[int, int]
    sizes: tuple[int, int]
    gap: int
    placement: str
    what: str  # in words, for tables


# The evaluation's layout groups (dla detect --eval, the dense detector's test): today's layout first,
# then the ones a detector was not tuned for: small and large digits, crowds, larger canvases.
LAYOUTS = {
    "base": Layout(128, (1, 5), (20, 40), 0, "uniform", "128 px, 1-5 digits at 20-40 px"),
    "small": Layout(128, (1, 8), (12, 20), 1, "uniform", "128 px, 1-8 digits at 12-20 px"),
    "large": Layout(128, (1, 4), (40, 64), 1, "uniform", "128 px, 1-4 digits at 40-64 px"),
    "crowded": Layout(160, (2, 8), (12, 64), 1, "packed", "160 px, 2-8 digits at 12-64 px, packed 1 px apart"),
    "wide": Layout(256, (1, 8), (12, 64), 1, "uniform", "256 px, 1-8 digits at 12-64 px"),
}


def layout_canvases(x: torch.Tensor, y: torch.Tensor, layout: Layout, n: int, seed: int) -> Canvases:
    """`n` canvases of `layout` from the digits (x, y), seeded."""
    return detection_canvases(x, y, n, layout.size, layout.count, layout.sizes, seed, layout.gap, layout.placement)


EVAL_SEED = 2026  # the evaluation canvases' seed, plus the layout's index ("base" is dla detect --eval's first layout)


def eval_canvases(x: torch.Tensor, y: torch.Tensor, name: str, n: int) -> Canvases:
    """The `n` evaluation canvases of layout `name` from test digits (x, y): the same on every machine."""
    return layout_canvases(x, y, LAYOUTS[name], n, EVAL_SEED + list(LAYOUTS).index(name))


def training_canvases(x: torch.Tensor, y: torch.Tensor, n: int, size: int, count: tuple[int, int],
                      sizes: tuple[int, int], gap: int, packed: float, seed: int) -> Canvases:
    """`n` training canvases: round(n * packed) of them packed (at least two digits each), the rest uniform,
    in a seeded random order."""
    n_packed = round(n * packed)
    parts = []
    if n - n_packed:
        parts.append(detection_canvases(x, y, n - n_packed, size, count, sizes, seed, gap, "uniform"))
    if n_packed:
        parts.append(detection_canvases(x, y, n_packed, size, (max(2, count[0]), max(2, count[1])), sizes,
                                        seed + 1, gap, "packed"))
    images = torch.cat([p.images for p in parts])
    boxes = [b for p in parts for b in p.boxes]
    labels = [lab for p in parts for lab in p.labels]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return Canvases(images[order], [boxes[i] for i in order], [labels[i] for i in order])


# What the detector's background class is made of, and how much the digits themselves are jittered.
POSITIVE_SCALE, POSITIVE_SHIFT = (0.85, 1.15), 2.0
OFF_CENTRE_RADIUS = (10.0, 22.0)  # px: a window this far from a digit's centre sees part of it
TOO_LARGE, TOO_SMALL = (1.6, 2.6), (0.3, 0.6)


def background_crops(x: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """`n` 28x28 crops that hold no whole, well-sized, centred digit, from the images `x`: in turn
    empty, off-centre, too large (zoomed in on part of a digit) and too small."""
    idx = torch.randint(0, len(x), (n,), generator=generator)
    kind = torch.arange(n) % 4
    scale, shift = torch.ones(n), torch.zeros(n, 2)
    off = kind == 1
    angle = _uniform(n, 0.0, 2 * math.pi, generator)
    radius = _uniform(n, *OFF_CENTRE_RADIUS, generator)
    shift[off] = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], 1)[off]
    scale[off] = _uniform(n, *POSITIVE_SCALE, generator)[off]
    big, small = kind == 2, kind == 3
    scale[big] = _uniform(n, *TOO_LARGE, generator)[big]
    shift[big] = _uniform(2 * n, -14.0, 14.0, generator).view(n, 2)[big]
    scale[small] = _uniform(n, *TOO_SMALL, generator)[small]
    shift[small] = _uniform(2 * n, -6.0, 6.0, generator).view(n, 2)[small]
    out = affine_digits(x[idx], scale, shift)
    out[kind == 0] = 0
    return out


def with_background(x: torch.Tensor, y: torch.Tensor, background: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The images of (x, y), each rescaled by 0.85-1.15 and moved by up to 2 px, plus as many background
    crops labelled `background`; shuffled together under `seed`."""
    g = torch.Generator().manual_seed(seed)
    n = len(y)
    positives = affine_digits(x, _uniform(n, *POSITIVE_SCALE, g), _uniform(2 * n, -POSITIVE_SHIFT, POSITIVE_SHIFT, g).view(n, 2))
    images = torch.cat([positives, background_crops(x, n, g)])
    labels = torch.cat([y, torch.full((n,), background, dtype=y.dtype)])
    perm = torch.randperm(2 * n, generator=g)
    return images[perm], labels[perm]
