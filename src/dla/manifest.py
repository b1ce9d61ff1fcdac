"""What a study wrote, described beside its files: FOLDER/manifest.json.

Every study (`dla ood`, `attack`, `cam`, `detect`, `gradients`, a sweep, a training run's `plots/`)
writes one into the folder of its outputs, e.g. RUN/ood/manifest.json:

    {"study": "ood", "title": "Out-of-distribution detection",
     "figures": [{"file": "hist_mnist.png", "caption": "ID vs OOD score histograms: mnist"}],
     "tables": [{"file": "table.md"}],
     "metrics": "metrics.json",
     "series": [{"plot": "accuracy-vs-eps", "title": "Accuracy under attack", "x": "ε (× 1/255)",
                 "y": "test accuracy (%)", "name": "FGSM", "points": [[0, 98.4], [4, 61.0]]}]}

`file` is relative to the folder. `metrics` is a mapping or the name of a JSON file. A `series` is
points of an interactive plot: the report overlays every series of one `plot` id across the runs
of a study. An entry with `same_as` names what the report draws itself ("training-curves",
"runs-table"); the report leaves such an entry out where it shows its own.

`dla report` renders manifests and nothing else. A folder written before manifests gets one built
from its images and Markdown files by `legacy_manifest`.

A leaf module: it imports nothing of dla's but `dla.io` and `dla.errors`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dla.errors import DlaError
from dla.io import atomic_text

MANIFEST = "manifest.json"
PLOTS_TITLE = "Plots"  # a training run's own plots/
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp")
# the studies' order in the report; a study not named here follows, by folder name
STUDY_ORDER = ("plots", "sweep", "gradients", "ood", "attack", "cam", "detect")
# folders written before manifests, and their titles (what the report showed then)
LEGACY_TITLES = {"plots": PLOTS_TITLE, "ood": "Out-of-distribution detection", "attack": "Adversarial attacks",
                 "cam": "Class activation maps and detection", "sweep": "Sweep plots"}


def write_manifest(folder: str | Path, study: str, title: str, figures: Iterable[dict[str, Any]] = (),
                   tables: Iterable[dict[str, Any]] = (), metrics: dict[str, Any] | str | None = None,
                   series: Iterable[dict[str, Any]] | None = None, *, over: str | Path | None = None) -> Path:
    """Write `folder`/manifest.json. `figures` and `tables` are {"file", "caption"?, "same_as"?} entries.

    A study run again with other options adds to its folder (`dla.io.atomic_dir` merges), so the
    manifest does too: the entries of the manifest in `over` (default: `folder` itself; a study
    writing into atomic_dir's temporary folder names the final one) for files not written now are
    kept, as are its series of another (plot, name) and its metrics when none are given."""
    folder = Path(folder)
    try:
        old = _read_raw(Path(over if over is not None else folder)) or {}
    except DlaError:
        old = {}  # a damaged manifest is replaced by this one
    manifest: dict[str, Any] = {"study": study, "title": title,
                                "figures": _merge(old.get("figures"), figures, lambda e: e.get("file")),
                                "tables": _merge(old.get("tables"), tables, lambda e: e.get("file"))}
    metrics = old.get("metrics") if metrics is None else metrics
    if metrics is not None:
        manifest["metrics"] = metrics
    merged = _merge(old.get("series"), series or (), lambda s: (s.get("plot"), s.get("name")))
    if merged:
        manifest["series"] = merged
    path = folder / MANIFEST
    atomic_text(path, json.dumps(manifest, indent=2, ensure_ascii=False, default=float) + "\n")
    return path


def _merge(old: Any, new: Iterable[dict[str, Any]], key: Any) -> list[dict[str, Any]]:
    """`old`'s entries with those of `new` in their place (same key), then `new`'s others."""
    new = [dict(e) for e in new]
    fresh = {key(e): e for e in new}
    kept = [fresh.pop(key(e), e) for e in (old if isinstance(old, list) else []) if isinstance(e, dict)]
    return kept + [e for e in new if key(e) in fresh]


def _read_raw(folder: Path) -> dict[str, Any] | None:
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise DlaError(f"{path}: damaged (not UTF-8 text at byte {exc.start})") from None
    except ValueError as exc:
        raise DlaError(f"{path}: damaged JSON ({exc})") from None
    except OSError as exc:
        raise DlaError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if not isinstance(raw, dict):
        raise DlaError(f"{path}: not a manifest (a JSON object with study, title, figures, tables)")
    return raw


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    """`folder`'s manifest, checked: None when it has none; a damaged one raises a `DlaError` naming it.

    Entries naming a file outside the folder or one no longer there are left out, as are malformed
    series, so that what is returned can be shown as it is."""
    folder = Path(folder)
    raw = _read_raw(folder)
    if raw is None:
        return None
    path = folder / MANIFEST
    if not isinstance(raw.get("study"), str) or not raw["study"] or not isinstance(raw.get("title"), str):
        raise DlaError(f"{path}: not a manifest (needs a study name and a title)")
    entries = {}
    for part in ("figures", "tables"):
        items = raw.get(part) or []
        if not isinstance(items, list):
            raise DlaError(f"{path}: {part} must be a list of {{file, caption}} entries")
        entries[part] = [dict(e) for e in items if isinstance(e, dict) and _inside(folder, e.get("file"))]
    metrics = raw.get("metrics")
    if isinstance(metrics, str) and not _inside(folder, metrics):
        metrics = None
    series = [s for s in raw.get("series") or [] if _is_series(s)] if isinstance(raw.get("series"), list) else []
    return {"study": raw["study"], "title": raw["title"], **entries,
            **({"metrics": metrics} if isinstance(metrics, (dict, str)) else {}), "series": series}


def _inside(folder: Path, name: Any) -> bool:
    """`name` is a relative path to a file inside `folder` (a manifest never points out of its folder)."""
    if not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(name).parts:
        return False
    target = folder / name
    return target.is_file() and folder.resolve() in target.resolve().parents


def _is_series(s: Any) -> bool:
    number = (int, float)
    return (isinstance(s, dict) and isinstance(s.get("plot"), str) and isinstance(s.get("name"), str)
            and isinstance(s.get("points"), list) and all(
                isinstance(p, list) and len(p) == 2 and all(isinstance(v, number) and not isinstance(v, bool) for v in p)
                for p in s["points"]))


def legacy_manifest(folder: str | Path, study: str | None = None) -> dict[str, Any] | None:
    """A manifest for a folder written before manifests (study `study`, default the folder's name), as the
    report showed such folders: its Markdown files (table.md first), then its images, each captioned
    with its path. None for a folder of no study known then, or with nothing to show."""
    folder = Path(folder)
    study = study or folder.name
    if study not in LEGACY_TITLES:
        return None
    files = sorted((p for p in folder.rglob("*") if p.is_file()), key=lambda p: (p.name != "table.md", p))
    figures, tables = [], []
    for path in files:
        rel = path.relative_to(folder).as_posix()
        same = {"same_as": "training-curves"} if path.name == "curves.png" else {}
        if path.suffix.lower() in IMAGE_SUFFIXES:
            figures.append({"file": rel, "caption": rel, **same})
        elif path.suffix == ".md":
            tables.append({"file": rel, **({"same_as": "runs-table"} if study == "sweep" else {})})
    if not figures and not tables:
        return None
    return {"study": study, "title": LEGACY_TITLES[study], "figures": figures, "tables": tables, "series": []}


def study_rank(manifest: dict[str, Any], folder: str = "") -> tuple[int, str]:
    """Where a study's manifest goes in the report: STUDY_ORDER, then the others by folder name."""
    study = manifest.get("study", "")
    return (STUDY_ORDER.index(study) if study in STUDY_ORDER else len(STUDY_ORDER), folder)
