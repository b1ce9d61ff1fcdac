"""Atomic file and folder writing: a crash or a failed command leaves the old content or the new,
never half; and where dla keeps its caches.

A leaf module (it imports nothing from dla), used by the run directory, checkpoints and every
command that writes results into a run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path


def cache_home() -> Path:
    """dla's cache folder: `$XDG_CACHE_HOME/dla`, else `~/.cache/dla` (data sets, compiled kernels)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dla"


def unique_name(name: str, used: set[str]) -> str:
    """`name`, else `name-2`, `name-3`, ...: the first not in `used`, which it is added to."""
    candidate, n = name, 1
    while candidate in used:
        n += 1
        candidate = f"{name}-{n}"
    used.add(candidate)
    return candidate


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file, fsync it, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_text(path: Path, text: str) -> None:
    """`atomic_write` of a string."""
    atomic_write(path, lambda tmp: tmp.write_text(text))


@contextlib.contextmanager
def atomic_dir(path: Path, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; on success it replaces `path` (merged over what was there).

    Files already in `path` that the command did not write are kept; files it wrote replace
    theirs. With `replace`, the filled folder takes the place of `path` whole (renamed into place;
    the old folder is removed after): the caller has put into it whatever of the old one should
    stay. On any failure the temporary folder is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if replace and path.is_dir():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)
                raise
            shutil.rmtree(old)
        elif path.is_dir():
            for item in tmp.rglob("*"):
                if item.is_file():
                    target = path / item.relative_to(tmp)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(item, target)
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
