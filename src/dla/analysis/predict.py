"""`dla predict RUN IMAGE...` for an image-classifier run: the top-k classes of each image file.

Every image is opened and checked before the model runs, so one unreadable file, or one that would
exhaust memory (PIL's decompression-bomb guard), fails the command with one line naming it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from dla.config import load_run_config, require_run_kind
from dla.data.imagefile import read_image
from dla.errors import DlaError
from dla.rundir import RunDir


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
