"""Image data sets (MNIST, Fashion-MNIST, CIFAR-10): find, verify, import, download and load.

The data root uses torchvision's layout, so a copy that `dla data import` puts there and one that
torchvision downloads are found the same way:

    ROOT/MNIST/raw/train-images-idx3-ubyte ...        (also what torchvision.datasets.MNIST reads)
    ROOT/FashionMNIST/raw/...
    ROOT/cifar10/cifar10_test.npz, cifar10_train*.npz  (offline imports)
    ROOT/cifar-10-batches-py/                          (torchvision download)

Every file is checked against its canonical md5 before use. Whole data sets are held in memory as
uint8 tensors of shape (N, C, H, W).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dla.errors import DataError
from dla.io import cache_home

CHUNK = 1 << 22

# What reading a damaged file raises: bad gzip headers and streams, truncation, broken zip archives.
DAMAGED = (OSError, EOFError, zlib.error, zipfile.BadZipFile, KeyError, ValueError)


def damaged(path: Path, exc: BaseException, what: str = "file") -> DataError:
    """A one-line `DataError` for a file that cannot be read: its path, what it is and why."""
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, EOFError) or "end-of-stream" in reason or "truncated" in reason.lower():
        reason = f"truncated ({reason})"
    raw = ""
    try:
        raw = f"; its md5 is {md5_bytes(Path(path).read_bytes())}"
    except OSError:
        pass
    return DataError(f"{path}: damaged {what}, cannot be read: {reason[:160]}{raw}; re-import or re-download it")


def default_data_root() -> Path:
    """`$DLA_DATA_ROOT`, else `$XDG_CACHE_HOME/dla/data`, else `~/.cache/dla/data`."""
    if os.environ.get("DLA_DATA_ROOT"):
        return Path(os.environ["DLA_DATA_ROOT"]).expanduser()
    return cache_home() / "data"


def md5_bytes(data: bytes | memoryview) -> str:
    return hashlib.md5(data).hexdigest()


def md5_file(path: Path) -> str:
    """md5 of a file's content; a `.gz` file is hashed after decompression."""
    digest = hashlib.md5()
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
    except DAMAGED as exc:
        raise damaged(path, exc, "gzip file" if path.suffix == ".gz" else "file") from None
    return digest.hexdigest()


@dataclass(frozen=True)
class VisionSpec:
    """What a data set is: shape, classes, normalisation constants and where its files live."""

    name: str
    title: str
    shape: tuple[int, int, int]
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    folder: str  # under the data root
    files: dict[str, str] = field(default_factory=dict)  # file name -> md5 of its (uncompressed) content
    system_dirs: tuple[str, ...] = ()  # places a distribution package installs the files
    import_hint: str = ""


IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

SPECS: dict[str, VisionSpec] = {
    "mnist": VisionSpec(
        name="mnist",
        title="MNIST",
        shape=(1, 28, 28),
        classes=tuple(str(i) for i in range(10)),
        mean=(0.1307,),
        std=(0.3081,),
        folder="MNIST/raw",
        files=dict(
            zip(
                IDX_FILES,
                (
                    "6bbc9ace898e44ae57da46a324031adb",
                    "a25bea736e30d166cdddb491f175f624",
                    "2646ac647ad5339dbf082846283269ea",
                    "27ae3e4e09519cfbb04c329615203637",
                ),
            )
        ),
        import_hint="dla data import mnist DIR  (DIR holds the four IDX files, .gz or not)",
    ),
    "fashion-mnist": VisionSpec(
        name="fashion-mnist",
        title="Fashion-MNIST",
        shape=(1, 28, 28),
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        mean=(0.2860,),
        std=(0.3530,),
        folder="FashionMNIST/raw",
        files=dict(
            zip(
                IDX_FILES,
                (
                    "f4a8712d7a061bf5bd6d2ca38dc4d50a",
                    "9018921c3c673c538a1fc5bad174d6f9",
                    "8181f5470baa50b63fa0f6fddb340f0a",
                    "15d484375f8d13e6eb1aabb0c3f46965",
                ),
            )
        ),
        system_dirs=("/usr/share/datasets/fashion-mnist",),
        import_hint="apt-get install dataset-fashion-mnist, or dla data import fashion-mnist DIR",
    ),
    "cifar10": VisionSpec(
        name="cifar10",
        title="CIFAR-10",
        shape=(3, 32, 32),
        classes=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        folder="cifar10",
        # md5 of images.tobytes() in the .npz copies; torchvision's own download is checked by torchvision.
        files={
            "cifar10_test.npz": "6d2714505047e13831cd876923568712",
            "cifar10_train_jpeg_q75.npz": "72662491311eea90632a1d0f92198ecd",
        },
        import_hint="dla data import cifar10 DIR  (DIR holds cifar10_test.npz and cifar10_train_jpeg_q75.npz)",
    ),
}

CIFAR_JPEG_TRAIN = "cifar10_train_jpeg_q75.npz"
TORCHVISION_CLASSES = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "cifar10": "CIFAR10"}


def get_spec(name: str) -> VisionSpec:
    if name not in SPECS:
        raise DataError(f"unknown data set {name!r}; valid: {', '.join(SPECS)}")
    return SPECS[name]


# ---------------------------------------------------------------------------------------------
# Finding and verifying files


def _find_file(directory: Path, name: str) -> Path | None:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _npz_images_md5(path: Path) -> str:
    try:
        with np.load(path, allow_pickle=False) as z:
            return md5_bytes(np.ascontiguousarray(z["images"]).data)
    except DAMAGED as exc:
        raise damaged(path, exc, ".npz archive") from None


def file_md5(path: Path) -> str:
    """The md5 a spec records for this file: npz images, else the (decompressed) bytes."""
    return _npz_images_md5(path) if path.suffix == ".npz" else md5_file(path)


def _md5_or_none(path: Path) -> str | None:
    """`file_md5`, or None for a file too damaged to read (it then counts as a checksum failure)."""
    try:
        return file_md5(path)
    except DataError:
        return None


@dataclass
class Location:
    """Where a data set was found, and the state of each of its files."""

    name: str
    directory: Path | None
    found: dict[str, Path]
    missing: list[str]
    bad: list[str]
    source: str  # "data root", "system" or "torchvision"

    @property
    def status(self) -> str:
        if self.bad:
            return "corrupt"
        if self.directory is None or not self.found:
            return "missing"
        return "partial" if self.missing else "present"


def _locations(spec: VisionSpec, root: Path) -> list[tuple[Path, str]]:
    return [(root / spec.folder, "data root")] + [(Path(d), "system") for d in spec.system_dirs]


def locate(name: str, root: Path, verify: bool = True) -> Location:
    """Find a data set under the data root or a system folder, checking each file's md5."""
    spec = get_spec(name)
    if name == "cifar10":
        tv = root / "cifar-10-batches-py"
        if (tv / "data_batch_1").is_file() and (tv / "test_batch").is_file():
            return Location(name, tv, {"cifar-10-batches-py": tv}, [], [], "torchvision")
    best: Location | None = None
    for directory, source in _locations(spec, root):
        found = {f: p for f in spec.files if (p := _find_file(directory, f))}
        if not found:
            continue
        bad = [f for f, p in found.items() if verify and _md5_or_none(p) != spec.files[f]]
        missing = [f for f in spec.files if f not in found]
        loc = Location(name, directory, found, missing, bad, source)
        if loc.status == "present":
            return loc
        best = best or loc
    return best or Location(name, None, {}, list(spec.files), [], "")


def import_dataset(name: str, source: Path, root: Path) -> Location:
    """Verify a local copy of `name` and put it under the data root where the loaders find it."""
    spec = get_spec(name)
    source = Path(source).expanduser()
    if not source.exists():
        raise DataError(f"{source}: no such file or folder")
    candidates = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
    matches: dict[str, Path] = {}
    for path in candidates:
        base = path.name[:-3] if path.name.endswith(".gz") else path.name
        if base in spec.files and base not in matches:
            matches[base] = path
    if not matches:
        raise DataError(f"{source}: none of {', '.join(spec.files)} (or .gz) found for {name}")
    for base, path in matches.items():  # every file is verified before anything is written
        digest = file_md5(path)
        if digest != spec.files[base]:
            raise DataError(f"{path}: checksum mismatch for {name} {base} (md5 {digest}, expected {spec.files[base]})")
    target = root / spec.folder
    target.mkdir(parents=True, exist_ok=True)
    for base, path in matches.items():
        dest = target / base
        tmp = dest.with_name(dest.name + ".tmp")
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK)
        else:
            shutil.copyfile(path, tmp)
        os.replace(tmp, dest)
    return locate(name, root)


def _try_download(name: str, root: Path) -> None:
    """Fetch the canonical files with torchvision; raise a one-line DataError when that fails."""
    import torchvision

    spec = get_spec(name)
    cls = getattr(torchvision.datasets, TORCHVISION_CLASSES[name])
    try:
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except Exception as exc:  # noqa: BLE001  (any network or archive failure ends the same way)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(
            f"{spec.title} is not in {root} and could not be downloaded ({reason[:120]}); "
            f"offline, use: {spec.import_hint}"
        ) from None


def require(name: str, root: Path, download: bool, need: tuple[str, ...] | None = None) -> Location:
    """Locate `name` with good checksums, downloading it if allowed; else a one-line DataError."""
    spec = get_spec(name)
    loc = locate(name, root)
    if loc.bad:
        files = ", ".join(str(loc.found[f]) for f in loc.bad)
        raise DataError(f"{spec.title}: checksum mismatch (damaged file) in {files}; re-import it: {spec.import_hint}")
    wanted = need or tuple(spec.files)
    if loc.source == "torchvision" or (loc.directory and all(f in loc.found for f in wanted)):
        return loc
    if download:
        _try_download(name, root)
        return require(name, root, download=False, need=need)
    missing = [f for f in wanted if f not in loc.found]
    raise DataError(f"{spec.title} is missing ({', '.join(missing)}) under {root}; fix: {spec.import_hint}")


# ---------------------------------------------------------------------------------------------
# Reading into memory


def read_idx(path: Path) -> torch.Tensor:
    """Read an IDX file (MNIST format, optionally gzipped) into a uint8 tensor."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except DAMAGED as exc:
        raise damaged(path, exc, "IDX file") from None
    ndim = data[3] if len(data) >= 4 else 0
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    size = int(np.prod(dims)) if dims else -1
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 8 or size != len(data) - 4 - 4 * ndim:
        raise damaged(path, ValueError(f"not a uint8 IDX file of the size its header gives ({len(data)} bytes)"),
                      "IDX file")
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    return torch.from_numpy(array.copy()).reshape(dims)


@dataclass
class ImageSet:
    """Images (N, C, H, W) uint8 and labels (N,) int64."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


JPEG_TRAIN_NOTE = " (JPEG train copy)"  # CIFAR-10's offline training set is lossy; its test set is not


@dataclass
class ImageData:
    spec: VisionSpec
    source: str  # how results on it are labelled, e.g. "CIFAR-10 (JPEG train copy)"
    train: ImageSet
    val: ImageSet
    test: ImageSet

    @property
    def test_source(self) -> str:
        """The label of results on the test split alone: the JPEG note is about the training images."""
        return self.source.replace(JPEG_TRAIN_NOTE, "")


def load_arrays(name: str, root: Path, download: bool = True) -> tuple[ImageSet, ImageSet, str]:
    """The full canonical train and test sets of `name`, and the label to report them under."""
    spec = get_spec(name)
    if name == "cifar10":
        return _load_cifar(spec, root, download)
    loc = require(name, root, download)
    images = {f: read_idx(p) for f, p in loc.found.items()}
    train = ImageSet(images[IDX_FILES[0]].unsqueeze(1), images[IDX_FILES[1]].long())
    test = ImageSet(images[IDX_FILES[2]].unsqueeze(1), images[IDX_FILES[3]].long())
    return train, test, spec.title


def _load_cifar(spec: VisionSpec, root: Path, download: bool) -> tuple[ImageSet, ImageSet, str]:
    loc = require("cifar10", root, download, need=("cifar10_test.npz", CIFAR_JPEG_TRAIN))
    if loc.source == "torchvision":
        import torchvision

        sets = [torchvision.datasets.CIFAR10(str(root), train=t, download=False) for t in (True, False)]
        train, test = (
            ImageSet(torch.from_numpy(s.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(s.targets)) for s in sets
        )
        return train, test, spec.title

    def npz(path: Path) -> ImageSet:
        try:
            with np.load(path, allow_pickle=False) as z:
                x = torch.from_numpy(z["images"]).permute(0, 3, 1, 2).contiguous()
                return ImageSet(x, torch.from_numpy(z["labels"].astype(np.int64)))
        except (*DAMAGED, RuntimeError) as exc:
            raise damaged(path, exc, ".npz archive") from None

    train = npz(loc.found[CIFAR_JPEG_TRAIN])
    test = npz(loc.found["cifar10_test.npz"])
    return train, test, spec.title + JPEG_TRAIN_NOTE


def keep_classes(images: ImageSet, classes: list[int]) -> ImageSet:
    """The images of `classes`, relabelled 0..k-1 in that order."""
    lookup = torch.full((int(images.y.max()) + 1,), -1, dtype=torch.long)
    lookup[torch.tensor(classes)] = torch.arange(len(classes))
    mask = lookup[images.y] >= 0
    return ImageSet(images.x[mask], lookup[images.y[mask]])


def drop_classes(images: ImageSet, classes: list[int]) -> ImageSet:
    """The images of every class not in `classes` (the held-out ones), labels unchanged."""
    mask = ~torch.isin(images.y, torch.tensor(classes))
    return ImageSet(images.x[mask], images.y[mask])


def load_image_data(
    name: str,
    root: Path,
    val_size: int,
    split_seed: int = 0,
    train_subset: int | None = None,
    test_subset: int | None = None,
    download: bool = True,
    classes: list[int] | None = None,
    canvas: int | None = None,
    background_class: bool = False,
) -> ImageData:
    """Load `name`, carve a validation split from the training set with a fixed seed, subset if asked.

    With `classes`, only those classes are kept, relabelled 0..k-1 in the order given. `canvas` and
    `background_class` (28x28 grey sets only) turn every split into canvases or add the background
    class, seeded from `split_seed` (see dla.data.canvas).
    """
    spec = get_spec(name)
    full_train, test, source = load_arrays(name, root, download)
    if classes is not None:
        bad = [c for c in classes if c >= len(spec.classes)]
        if bad:
            raise DataError(f"data.classes: {spec.title} has classes 0-{len(spec.classes) - 1}, not {bad}")
        full_train, test = keep_classes(full_train, classes), keep_classes(test, classes)
        source = f"{source} (classes {','.join(map(str, classes))})"
    if val_size >= len(full_train):
        raise DataError(f"data.val_size={val_size} leaves no training images ({len(full_train)} in {spec.title})")
    perm = torch.randperm(len(full_train), generator=torch.Generator().manual_seed(split_seed))
    val_idx, train_idx = perm[:val_size], perm[val_size:]
    if train_subset is not None:
        train_idx = train_idx[:train_subset]
    train = ImageSet(full_train.x[train_idx], full_train.y[train_idx])
    val = ImageSet(full_train.x[val_idx], full_train.y[val_idx])
    if test_subset is not None:
        test = ImageSet(test.x[:test_subset], test.y[:test_subset])
    if canvas is not None or background_class:
        option = "data.canvas" if canvas is not None else "data.background_class"
        if spec.shape != (1, 28, 28):
            raise DataError(f"{option}: for the 28x28 grey data sets (mnist, fashion-mnist), not {name}")
        from dla.data import canvas as cv

        splits = []
        for i, part in enumerate((train, val, test)):
            seed = split_seed * 1000 + 17 + i  # one seed per split
            if canvas is not None:
                splits.append(ImageSet(cv.paste_single(part.x, canvas, torch.Generator().manual_seed(seed))[0], part.y))
            else:
                splits.append(ImageSet(*cv.with_background(part.x, part.y, len(classes or spec.classes), seed)))
        train, val, test = splits
        source += f", in {canvas}x{canvas} canvases" if canvas is not None else ", + background class"
    return ImageData(spec, source, train, val, test)


def input_shape(cfg) -> tuple[int, int, int]:
    """The (C, H, W) an image-classifier run was trained on: its data set's, or its canvas's."""
    c, h, w = get_spec(cfg.data.name).shape
    canvas = getattr(cfg.data, "canvas", None)
    return (c, canvas, canvas) if canvas else (c, h, w)
