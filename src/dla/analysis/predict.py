"""`dla predict RUN IMAGE...` for an image-classifier run: the top-k classes of each image file.

Every image is opened and checked before the model runs, so one unreadable file, or one that would
exhaust memory (PIL's decompression-bomb guard), fails the command with one line naming it.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from dla.config import load_run_config, require_run_kind
from dla.errors import DlaError
from dla.rundir import RunDir


def read_image(path: str | Path, mode: str, size: tuple[int, int] | None) -> torch.Tensor:
    """An image file as a float tensor (C, H, W) in [0, 1], converted to `mode` and resized to `size`
    (w, h); `size` None keeps the file's own size."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # refuse, rather than warn and go on
            with Image.open(path) as opened:
                image = opened.convert(mode)
                image = image.resize(size, Image.BILINEAR) if size is not None else image
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
        raise DlaError(f"{path}: image too large to read safely ({size}, over the limit of "
                       f"{Image.MAX_IMAGE_PIXELS:,}: a decompression bomb?)") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise DlaError(f"{path}: cannot read as an image ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    w, h = image.size
    c = len(image.getbands())
    x = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(h, w, c).permute(2, 0, 1)
    return x.float().div(255)


def predict_images(run: RunDir, paths: Sequence[str | Path], top_k: int = 3,
                   invert: bool = False) -> list[tuple[str, list[tuple[str, float]]]]:
    """(path, [(class, probability), ...] best first) for each image, with the run's best weights."""
    from dla.build import input_shape
    from dla.experiment import class_names, load_run_model

    if top_k < 1:
        raise DlaError(f"--top-k: must be >= 1, got {top_k}")
    require_run_kind(load_run_config(run), "image-classifier", "dla predict", run.path)
    model, cfg = load_run_model(run)
    c, h, w = input_shape(cfg)
    images = [read_image(p, "L" if c == 1 else "RGB", (w, h)) for p in paths]  # all checked before any output
    classes = class_names(cfg)
    results = []
    for path, x in zip(paths, images):
        x = x.unsqueeze(0)
        if invert:
            x = 1.0 - x
        with torch.inference_mode():
            probs = model(x).softmax(1)[0]
        top = probs.topk(min(top_k, len(classes)))
        results.append((str(path), [(classes[i], float(p)) for p, i in zip(top.values, top.indices)]))
    return results
