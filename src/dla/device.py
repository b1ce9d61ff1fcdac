"""Where and how tensors run: the accelerator (device, DDP under torchrun), bf16 autocast, channels_last, compile.

One place for these choices, so every lab and command (training, evaluation, analysis, the
Hugging Face encoder) decides them the same way.
"""

from __future__ import annotations

import os
import shutil

import torch
from accelerate import Accelerator

from dla.config import TrainConfig
from dla.errors import ConfigError


def make_accelerator(train: TrainConfig) -> Accelerator:
    """An Accelerator for `train.device` (auto, cpu, cuda); DDP when launched by torchrun.

    `train.batch_size`, the global batch, must divide evenly across the processes.
    """
    device, deterministic, batch_size = train.device, train.deterministic, train.batch_size
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is available; use train.device=auto or cpu")
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    # accelerate only sets up gloo DDP under torchrun when told it runs on the CPU.
    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    accelerator = Accelerator(cpu=on_cpu)
    if batch_size % accelerator.num_processes:
        raise ConfigError(
            f"train.batch_size={batch_size} must divide evenly across {accelerator.num_processes} processes"
        )
    return accelerator


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """bf16 autocast when asked for (CPUs with avx512_bf16, GPUs), else a no-op context.

    Done here rather than through `Accelerator(mixed_precision=...)`, whose process-wide state
    cannot change between runs in one process (a sweep, the tests).
    """
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def prepare_input(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def can_compile(device: torch.device, verbose: bool = True) -> bool:
    """torch.compile on the CPU needs a C++ compiler; without one, train eagerly instead of failing later."""
    if device.type == "cpu" and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        if verbose:
            print("note: train.compile=true needs a C++ compiler on the CPU (none found); training without compile")
        return False
    return True
