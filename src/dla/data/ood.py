"""Out-of-distribution image sets, adapted to an in-distribution data set's shape.

Real sets (MNIST, Fashion-MNIST, the CIFAR-10 test split) are resized and converted between grey
and RGB (grey is tiled to three channels; RGB is averaged to grey); synthetic sets are uniform
noise and Gaussian noise (mean 0.5, std 0.25, clamped). All come back as float images in [0, 1].
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from dla.data.batches import to_unit_float
from dla.data.vision import SPECS, ImageSet, load_arrays
from dla.errors import DataError

SYNTHETIC = ("noise-uniform", "noise-gaussian")
ONLINE_ONLY = ("svhn", "cifar100")  # test splits through torchvision; no offline copy exists here
OOD_SETS = (*SPECS, *SYNTHETIC, *ONLINE_ONLY)


def to_shape(x: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Float images (N, C, H, W) in [0, 1] converted to `shape` (channels, height, width)."""
    c, h, w = shape
    if x.shape[1] != c:
        x = x.mean(1, keepdim=True) if c == 1 else x.expand(-1, c, -1, -1)
    if x.shape[2:] != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    return x.contiguous()


def sample(images: ImageSet, n: int | None, seed: int) -> ImageSet:
    """`n` images drawn without replacement with a fixed seed (all of them when n is None)."""
    if n is None or n >= len(images):
        return images
    idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n]
    return ImageSet(images.x[idx], images.y[idx])


def ood_images(
    name: str, shape: tuple[int, int, int], root: Path, n: int, seed: int = 0, download: bool = True
) -> torch.Tensor:
    """`n` images of the OOD set `name` as float [0, 1] tensors of `shape`."""
    gen = torch.Generator().manual_seed(seed)
    if name == "noise-uniform":
        return torch.rand(n, *shape, generator=gen)
    if name == "noise-gaussian":
        return (0.5 + 0.25 * torch.randn(n, *shape, generator=gen)).clamp(0, 1)
    if name in ONLINE_ONLY:
        test = _torchvision_test(name, root, download)
    elif name in SPECS:
        _, test, _ = load_arrays(name, root, download)
    else:
        raise DataError(f"unknown OOD set {name!r}; valid: {', '.join(OOD_SETS)}")
    picked = sample(test, n, seed)
    return to_shape(to_unit_float(picked.x), shape)


def _torchvision_test(name: str, root: Path, download: bool) -> ImageSet:
    import torchvision

    try:
        if name == "svhn":
            ds = torchvision.datasets.SVHN(str(root / "svhn"), split="test", download=download)
            return ImageSet(torch.from_numpy(ds.data), torch.from_numpy(ds.labels).long())
        ds = torchvision.datasets.CIFAR100(str(root), train=False, download=download)
        return ImageSet(torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets))
    except Exception as exc:  # noqa: BLE001  (offline, or a failed download: the same advice)
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:100]
        offline = ", ".join(s for s in OOD_SETS if s not in ONLINE_ONLY)
        raise DataError(f"{name} comes from torchvision and needs a network ({reason}); offline use: {offline}") from None
