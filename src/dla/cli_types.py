"""Small argparse `type=` validators: each option's valid range is checked before any work starts.

A bad value ends as argparse's usual one-line usage error, naming the option, the value and the
range, e.g. `dla generate: error: argument --top-p: 1.5 is not in (0, 1]`.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from fractions import Fraction


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer (>= 1)")
    return value


def nonneg_int(text: str) -> int:
    """An integer >= 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is not >= 0")
    return value


def seed_int(text: str) -> int:
    """A random seed: an integer in [0, 2**32 - 1]."""
    value = _int(text)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"{value} is not a seed in [0, 2**32 - 1]")
    return value


def finite_float(low: float | None = None, high: float | None = None, low_open: bool = False,
                 high_open: bool = False) -> Callable[[str], float]:
    """A finite number in the range [low, high] (either end open, or unbounded when None)."""
    left = "(" if low_open or low is None else "["
    right = ")" if high_open or high is None else "]"
    span = f"{left}{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}{right}"

    def check(text: str) -> float:
        value = _float(text)
        below = low is not None and (value <= low if low_open else value < low)
        above = high is not None and (value >= high if high_open else value > high)
        if below or above:
            raise argparse.ArgumentTypeError(f"{value:g} is not in {span}")
        return value

    check.__name__ = f"number in {span}"
    return check


nonneg_float = finite_float(0.0)
positive_float = finite_float(0.0, low_open=True)
unit_interval = finite_float(0.0, 1.0)
top_p_float = finite_float(0.0, 1.0, low_open=True)


def parse_eps_list(text: str) -> list[float]:
    """'0,1/255,8/255' -> [0.0, 0.0039..., 0.0313...]: finite radii >= 0 (pixel units). L-infinity
    radii must be <= 1 too: the attack study checks that for its L-infinity methods."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"{text!r} holds no epsilon; give e.g. 0,8/255")
    values = []
    for part in parts:
        try:
            value = float(Fraction(part))
        except (ValueError, ZeroDivisionError):
            raise argparse.ArgumentTypeError(
                f"{part!r} is not a number or a fraction like 8/255") from None
        if not (math.isfinite(value) and value >= 0.0):
            raise argparse.ArgumentTypeError(f"{part} is not a finite radius >= 0 (pixel units: 8/255 is the usual budget)")
        values.append(value)
    return values


eps_list = parse_eps_list


def positive_float_list(text: str) -> list[float]:
    """'0.1,1,10' -> [0.1, 1.0, 10.0]: finite numbers > 0, at most 16, no repeats (CW's c values)."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"{text!r} holds no number; give e.g. 1 or 0.1,1,10,100")
    values = [positive_float(part) for part in parts]
    if len(set(values)) != len(values) or len(values) > 16:
        raise argparse.ArgumentTypeError(f"{text!r}: give at most 16 different values")
    return values


def canvas_int(text: str) -> int:
    """A canvas side in pixels for 28x28 images: an integer in [28, 512]."""
    value = _int(text)
    if not 28 <= value <= 512:
        raise argparse.ArgumentTypeError(f"{value} is not a canvas size in [28, 512] px")
    return value


def size_list(text: str) -> list[int]:
    """'20,28,40' -> [20, 28, 40]: object sizes in pixels, each in [8, 1024]."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"{text!r} holds no size; give e.g. 20,28,40")
    values = []
    for part in parts:
        value = _int(part)
        if not 8 <= value <= 1024:
            raise argparse.ArgumentTypeError(f"{value} is not a size in [8, 1024] px")
        values.append(value)
    return values


def attack_target(text: str) -> int | str:
    """A targeted attack's target: a class index (>= 0), `random` or `least-likely`."""
    if text in ("random", "least-likely"):
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a class index, random or least-likely") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is not a class index (>= 0)")
    return value


class Registry:
    """The names of a registry, the dict `attr` of `module` (detectors, attacks, CAM methods), imported on first
    use: when an option that names one is given or its --help printed. `dla --help` and the other commands
    never import it (torch, scikit-learn). Used as an option's `choices`; a list is in it when all its names are."""

    def __init__(self, module: str, attr: str):
        self.module, self.attr = module, attr
        self._names: tuple[str, ...] | None = None

    def names(self) -> tuple[str, ...]:
        if self._names is None:
            from importlib import import_module

            self._names = tuple(getattr(import_module(self.module), self.attr))
        return self._names

    def __iter__(self):
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __contains__(self, value: object) -> bool:
        values = value if isinstance(value, list) else [value]
        return all(v in self.names() for v in values)


def name_list(registry: Registry, what: str) -> Callable[[str], list[str]]:
    """A comma-separated list of names of `registry`, each known and named once."""

    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        valid = ", ".join(registry)
        if not names:
            raise argparse.ArgumentTypeError(f"give at least one {what}; valid: {valid}")
        unknown = [n for n in names if n not in registry]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {what} {unknown[0]!r}; valid: {valid}")
        twice = next((n for n in names if names.count(n) > 1), None)
        if twice:
            raise argparse.ArgumentTypeError(f"{twice} is named twice")
        return names

    return parse
