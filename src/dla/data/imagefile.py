"""Image files read safely: one unreadable, damaged or decompression-bomb file fails with one line
naming it (a `DlaError`), never a traceback. Used by predict, CAM, detection and `dla ood --ood DIR`."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch

from dla.errors import DlaError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


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
