"""Out-of-distribution image sets, adapted to an in-distribution data set's shape.

Real sets (MNIST, Fashion-MNIST, the CIFAR-10 test split) are resized and converted between grey
and RGB (grey is tiled to three channels; RGB is averaged to grey); synthetic sets are uniform
noise, Gaussian noise (mean 0.5, std 0.25, clamped) and torchvision's FakeData (the original
lab's OOD set). A user's own set is a folder of image
files (any size, grey or colour) or an .npz file with an `images` array (`user_images`). All come
back as float images in [0, 1].
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dla.data.batches import to_unit_float
from dla.data.imagefile import IMAGE_SUFFIXES, read_image
from dla.data.vision import DAMAGED, SPECS, ImageSet, damaged, drop_classes, get_spec, load_arrays
from dla.errors import DataError, DlaError

SYNTHETIC = ("noise-uniform", "noise-gaussian", "fakedata")  # fakedata: torchvision's FakeData, the original's set
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
    if name == "fakedata":
        return _fakedata(n, shape, seed)
    if name in ONLINE_ONLY:
        test = _torchvision_test(name, root, download)
    elif name in SPECS:
        _, test, _ = load_arrays(name, root, download)
    else:
        raise DataError(f"unknown OOD set {name!r}; valid: {', '.join(OOD_SETS)}")
    picked = sample(test, n, seed)
    return to_shape(to_unit_float(picked.x), shape)


def _fakedata(n: int, shape: tuple[int, int, int], seed: int) -> torch.Tensor:
    """torchvision's FakeData as the original lab used it (`FakeData(size, image_size, transform=ToTensor())`):
    standard-normal pixels through ToPILImage, so values wrap around modulo 256 into a speckle of [0, 1]."""
    import torchvision

    ds = torchvision.datasets.FakeData(size=n, image_size=shape, num_classes=10,
                                       transform=torchvision.transforms.ToTensor(), random_offset=seed)
    return torch.stack([ds[i][0] for i in range(n)])


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


def is_user_set(name: str) -> bool:
    """An --ood entry that names a folder or an .npz file rather than a built-in set."""
    return name not in OOD_SETS and name != "heldout" and ("/" in name or name.endswith(".npz") or Path(name).exists())


def user_set_label(name: str) -> str:
    """A short name for a user's set in tables and file names: its folder or file name."""
    if not is_user_set(name):
        return name
    stem = Path(name.rstrip("/")).name
    stem = stem[:-4] if stem.endswith(".npz") else stem
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem) or "user-set"


def check_user_set(name: str) -> None:
    path = Path(name)
    if not path.exists():
        raise DataError(f"--ood {name}: no such folder or .npz file")
    if path.is_file() and path.suffix != ".npz":
        raise DataError(f"--ood {name}: a folder of images or an .npz file with an 'images' array, not a {path.suffix or 'plain'} file")


def _npz_images(path: Path) -> torch.Tensor:
    try:
        with np.load(path, allow_pickle=False) as z:
            if "images" not in z.files:
                raise DataError(f"{path}: no 'images' array (it holds: {', '.join(z.files) or 'nothing'})")
            arr = z["images"]
    except DataError:
        raise
    except DAMAGED as exc:
        raise damaged(path, exc, ".npz archive") from None
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim == 4 and arr.shape[-1] in (1, 3) and arr.shape[1] not in (1, 3):
        arr = arr.transpose(0, 3, 1, 2)  # N, H, W, C
    if arr.ndim != 4 or arr.shape[1] not in (1, 3) or len(arr) == 0:
        raise DataError(f"{path}: 'images' must be N x H x W, N x H x W x C or N x C x H x W with C 1 or 3 "
                        f"and N >= 1, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(arr)).float().div_(255)
    if np.issubdtype(arr.dtype, np.floating):
        x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
            raise DataError(f"{path}: float 'images' must be finite and in [0, 1]")
        return x
    raise DataError(f"{path}: 'images' must be uint8 (0-255) or float in [0, 1], not {arr.dtype}")


def user_images(name: str, shape: tuple[int, int, int], n: int, seed: int = 0) -> torch.Tensor:
    """Up to `n` images (seeded) of a user's folder or .npz, converted to `shape`: resized, grey or RGB."""
    check_user_set(name)
    path = Path(name)
    c, h, w = shape
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"{path}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        if n < len(files):
            idx = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed))[:n].sort().values
            files = [files[i] for i in idx.tolist()]
        return torch.stack([read_image(f, "L" if c == 1 else "RGB", (w, h)) for f in files])
    x = _npz_images(path)
    if n < len(x):
        x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]]
    return to_shape(x, shape)


# OpenOOD's split: near OOD shares the training images' look (held-out classes of the same data, CIFAR-100 for
# CIFAR-10), far OOD does not (another data set, noise). Sets marked online-only are skipped when offline.
GROUPS = {
    "cifar10": {"near": ("heldout", "cifar100"), "far": ("mnist", "noise-uniform", "noise-gaussian", "svhn")},
    "fashion-mnist": {"near": ("heldout",), "far": ("mnist", "noise-uniform", "noise-gaussian")},
    "mnist": {"near": ("heldout",), "far": ("fashion-mnist", "noise-uniform", "noise-gaussian")},
}


def expand_groups(cfg, entries: list[str]) -> list[tuple[str, str | None]]:
    """--ood entries with `near` and `far` replaced by their sets for the run's data: (set, group) pairs.
    `heldout` joins `near` only for a run trained on a subset of classes."""
    out: list[tuple[str, str | None]] = []
    for entry in entries:
        if entry not in ("near", "far"):
            out.append((entry, None))
            continue
        groups = GROUPS.get(cfg.data.name)
        if groups is None:
            raise DlaError(f"--ood {entry}: no near/far split for {cfg.data.name}; name the sets instead")
        sets = [s for s in groups[entry] if s != "heldout" or cfg.data.classes]
        offline = [s for s in sets if s not in ONLINE_ONLY]
        if not sets or (not offline and not cfg.data.download):
            raise DlaError(f"--ood {entry}: for {cfg.data.name}, offline near OOD is the held-out classes of a run "
                           f"trained with data.classes=[...] (e.g. [0,1,2,3,4,5])")
        out.extend((s, entry) for s in sets)
    return out


HELDOUT_NEEDS_CLASSES = "heldout needs a run trained with data.classes=[...] (e.g. [0,1,2,3,4,5])"


def default_ood_set(cfg) -> str:
    """`dla ood`'s set when --ood is not given: MNIST, or Fashion-MNIST for a run trained on MNIST."""
    return "fashion-mnist" if cfg.data.name == "mnist" else "mnist"


def check_set_names(cfg, ood_sets: list[str], option: str = "--ood") -> None:
    """Every OOD set name (or group, or user folder / .npz) valid for this run's config: known, not the
    run's own data set (its test images are in-distribution: scoring them as OOD measures nothing, an
    AUROC near 0.5 by construction), and each set once."""
    if "heldout" in ood_sets and not cfg.data.classes:
        raise DlaError(f"{option} {HELDOUT_NEEDS_CLASSES}")
    valid = ", ".join((*OOD_SETS, "heldout", "near", "far"))
    if not ood_sets:
        raise DlaError(f"{option}: give at least one OOD set; valid: {valid}")
    unknown = [s for s in ood_sets if s not in (*OOD_SETS, "heldout", "near", "far") and not is_user_set(s)]
    if unknown:
        raise DlaError(f"{option}: unknown OOD set {unknown[0]!r}; valid: {valid}, or a folder of images or an .npz file")
    if cfg.data.name in ood_sets:
        held = "heldout (the classes it never saw)" if cfg.data.classes else "e.g. " + default_ood_set(cfg)
        raise DlaError(f"{option} {cfg.data.name}: the run was trained on {cfg.data.name}, so its images are "
                       f"in-distribution, not OOD; choose another set: {held}")
    labels = [user_set_label(name) for name, _ in expand_groups(cfg, ood_sets)]
    twice = next((label for label in labels if labels.count(label) > 1), None)
    if twice:
        raise DlaError(f"{option}: the OOD set {twice} comes twice (named again, in a group, or two user sets of "
                       f"that name); give each once")
    for s in ood_sets:
        if is_user_set(s):
            check_user_set(s)


def ood_set_images(name: str, cfg, data_root: Path, n: int, seed: int) -> torch.Tensor:
    """OOD images for a run: a named set adapted to the run's input shape, or its held-out classes."""
    if name == "heldout":
        if not cfg.data.classes:
            raise DlaError(f"--ood {HELDOUT_NEEDS_CLASSES}")
        _, test, _ = load_arrays(cfg.data.name, data_root, cfg.data.download)
        return to_unit_float(sample(drop_classes(test, cfg.data.classes), n, seed).x)
    if is_user_set(name):
        return user_images(name, get_spec(cfg.data.name).shape, n, seed)
    return ood_images(name, get_spec(cfg.data.name).shape, data_root, n, seed, cfg.data.download)


def load_sets(cfg, ood_sets: list[str], data_root: Path, n: int, seed: int) -> list[tuple[str, str | None, torch.Tensor]]:
    """(set, group, images) of every --ood entry, groups expanded: all of them read before the first is scored,
    so a damaged or missing set fails before any work. A group none of whose sets can be had is an error."""
    loaded, skipped = [], {}
    for name, group in expand_groups(cfg, ood_sets):
        x = grouped_set_images(name, group, cfg, data_root, n, seed)
        if x is None:
            skipped.setdefault(group, []).append(name)
        else:
            loaded.append((name, group, x))
    for group, names in skipped.items():
        if not any(g == group for _, g, _ in loaded):
            raise DlaError(f"--ood {group}: none of its sets for {cfg.data.name} could be had ({', '.join(names)}: "
                           f"not on disk, and no network); offline, use a run trained with data.classes=[...] and "
                           f"--ood heldout, or name sets that are on disk")
    return loaded


def grouped_set_images(name: str, group: str | None, cfg, data_root: Path, n: int, seed: int) -> torch.Tensor | None:
    """`ood_set_images`, except that an online-only set that came from a group (near, far) and cannot be
    fetched is skipped with a line (None); named on its own, it fails as usual."""
    try:
        return ood_set_images(name, cfg, data_root, n, seed)
    except DlaError as exc:
        if group is None or name not in ONLINE_ONLY:
            raise
        print(f"{name}: skipped from the {group} group ({str(exc).split(';')[0]})", flush=True)
        return None
