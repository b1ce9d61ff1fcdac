"""Weights as safetensors, resumable training state as a weights-only torch file; both written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from dla.errors import CheckpointError
from dla.io import atomic_write


def save_weights(model: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    """The model's state dict as a safetensors file (tensors cloned, so tied and channels_last weights save too)."""
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=metadata or {}))


def load_weights(model: nn.Module, path: Path) -> None:
    """Load safetensors weights into `model`; a file that does not fit the model raises a one-line error."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file")
    expected = model.state_dict()
    try:
        with safe_open(str(path), framework="pt") as fh:
            shapes = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
            state = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # noqa: BLE001  (any parse failure means the same to the user)
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise CheckpointError(f"{path}: damaged or not a safetensors file ({reason})") from None
    missing = sorted(set(expected) - set(shapes))
    extra = sorted(set(shapes) - set(expected))
    wrong = [k for k in expected if k in shapes and shapes[k] != tuple(expected[k].shape)]
    if missing or extra or wrong:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        if extra:
            parts.append(f"unexpected {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}")
        if wrong:
            k = wrong[0]
            parts.append(f"{k} has shape {shapes[k]} in the file but {tuple(expected[k].shape)} in the model")
        raise CheckpointError(f"{path} does not match the model: {'; '.join(parts)}")
    model.load_state_dict(state)


def save_state(state: dict[str, Any], path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: Path) -> dict[str, Any]:
    """Load a training state saved by `save_state`, never unpickling arbitrary objects."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no training state to resume from")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        reason = (str(exc).splitlines() or [type(exc).__name__])[0].split(". ")[0][:160]
        raise CheckpointError(f"{path}: damaged or unreadable training state ({reason}); "
                              "resume needs the last.pt that dla train wrote") from None
