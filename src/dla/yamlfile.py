"""Reading YAML files with one-line errors ("FILE, line N, column M: problem"): configs, sweeps, run files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from dla.errors import ConfigError


def read_yaml(path: Path) -> Any:
    """Parse a YAML file; a syntax error raises a one-line `ConfigError` as "FILE, line N: problem"."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(yaml_error_line(exc, path)) from None


def yaml_error_line(exc: Exception, path: Path | str | None = None) -> str:
    """One line for a YAML parse error: "FILE, line N, column M: problem"."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"{path or 'YAML'}"
    if mark is not None:
        where += f", line {mark.line + 1}, column {mark.column + 1}"
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or str(exc).splitlines()[0]
    return f"{where}: YAML syntax error: {problem}"
