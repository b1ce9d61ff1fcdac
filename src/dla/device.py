"""Where and how tensors run: the accelerator (device, DDP under torchrun), bf16 autocast, channels_last, compile.

One place for these choices, so every lab and command (training, evaluation, analysis, the
Hugging Face encoder) decides them the same way.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator

from dla.config import TrainConfig
from dla.errors import ConfigError
from dla.io import cache_home


def make_accelerator(train: TrainConfig) -> Accelerator:
    """An Accelerator for `train.device` (auto, cpu, cuda); DDP when launched by torchrun.

    `train.precision` and `train.compile` are settled first (`resolve_execution`): a config that
    says `auto` leaves with the choice made for this machine. `train.batch_size`, the global batch,
    must divide evenly across the processes.
    """
    resolve_execution(train)
    device, deterministic, batch_size = train.device, train.deterministic, train.batch_size
    if train.compile:
        compile_cache()
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is available; use train.device=auto or cpu")
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        if train.compile:
            torch.use_deterministic_algorithms(True, warn_only=True)  # also sets inductor's own flag
        else:  # the same switch without importing inductor to set that flag: 2 s of start-up on 2 cores
            torch._C._set_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    # accelerate only sets up gloo DDP under torchrun when told it runs on the CPU.
    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    if on_cpu:
        # Flush denormal floats to zero: Adam's second moments of rarely-updated weights (dead ReLU units)
        # decay into the denormal range, where each CPU operation on them is many times slower. On a small
        # net this halves the optimiser step (benchmarks/rl_vs_sb3.py); no value above 1e-38 changes.
        torch.set_flush_denormal(True)
    accelerator = Accelerator(cpu=on_cpu)
    if batch_size % accelerator.num_processes:
        raise ConfigError(
            f"train.batch_size={batch_size} must divide evenly across {accelerator.num_processes} processes"
        )
    return accelerator


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AMX or AVX512-BF16). Without either, oneDNN emulates bf16
    matmuls: measured on a 2-core AVX2 EPYC, a Lab 2.1 GPT step took 863 ms under bf16 autocast against
    66 ms in fp32 (RESULTS.md, start-up and end-of-run audit)."""
    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        check = getattr(torch.cpu, name, None)
        if check is not None and check():
            return True
    return False


_warned_bf16 = False


def resolve_execution(train: TrainConfig) -> None:
    """Settle `train.precision=auto` and `train.compile=auto` for this machine, in place.

    precision auto: bf16 on a GPU that supports it and on a CPU with AMX or AVX512-BF16, else fp32.
    compile auto: on a GPU, and on a CPU under bf16 autocast (fusing the casts around each matmul:
    1.6x faster Lab 2.1 steps on an AMX Xeon); not for fp32 on a CPU, where compiled steps were 0-1.36x
    faster than eager in the measurements and a cold compile (15-50 s) cost about what it saved (RESULTS.md). An explicit bf16 on a
    CPU that emulates it is kept, with a one-line note.
    """
    global _warned_bf16
    cuda = train.device == "cuda" or (train.device == "auto" and torch.cuda.is_available())
    if train.precision == "auto":
        native = torch.cuda.is_bf16_supported() if cuda else cpu_has_bf16()
        train.precision = "bf16" if native else "fp32"
    elif train.precision == "bf16" and not cuda and not cpu_has_bf16() and not _warned_bf16:
        _warned_bf16 = True
        print("note: this CPU has no AMX or AVX512-BF16 units: bf16 autocast is emulated here, about 10x slower "
              "than fp32 (train.precision=auto chooses fp32 on it)")
    if train.compile == "auto":
        train.compile = cuda or train.precision == "bf16"


def release_distributed() -> None:
    """Destroy the process group that the first `make_accelerator` of a torchrun process created.

    Called once, when a command ends by any path (`dla.cli.main`). Left alive, gloo's worker threads
    meet the interpreter's shutdown and can abort the process (SIGABRT, "terminate called without an
    active exception") after a successful run, so torchrun reports the job as failed.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        from accelerate import PartialState

        PartialState().destroy_process_group()


def cpu_description() -> str:
    """The CPU model, its core count and its bf16 units (AMX, AVX512-BF16), which decide what bf16
    autocast gains on it: every speed figure should say which CPU it was measured on."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        import platform

        return f"{platform.processor() or 'unknown CPU'}, {os.cpu_count()} cores"
    model = re.search(r"model name\s*:\s*(.+)", info)
    flags_line = re.search(r"flags\s*:\s*(.+)", info)
    flags = set(flags_line.group(1).split()) if flags_line else set()
    units = [u for u, f in (("AMX", "amx_bf16"), ("AVX512-BF16", "avx512_bf16")) if f in flags] or ["no bf16 units"]
    return f"{model.group(1).strip() if model else 'unknown CPU'}, {os.cpu_count()} cores, {' + '.join(units)}"


def seed_process(seed: int, rank: int, step: int = 0) -> None:
    """Under torchrun, processes after the first reseed torch's global RNG (dropout masks) so that
    each draws its own; rank 0 keeps the stream of a 1-process run. A 2-process run with dropout is
    then equivalent in distribution to the 1-process run, not identical (without dropout it is)."""
    if rank > 0:
        torch.manual_seed(seed + 7919 * rank + step)


def compile_cache() -> str:
    """Where torch.compile keeps what it compiled, so that the next run of the same model loads it
    instead of compiling again (a 35 s first step becomes about 2 s for the Lab 2.1 GPT on 2 cores):
    $TORCHINDUCTOR_CACHE_DIR when set, else dla's cache folder, which outlives /tmp (torch's default)."""
    return os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_home() / "inductor"))


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """bf16 autocast when asked for (CPUs with avx512_bf16, GPUs), else a no-op context.

    Done here rather than through `Accelerator(mixed_precision=...)`, whose process-wide state
    cannot change between runs in one process (a sweep, the tests).
    """
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def prepare_input(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def compile_model(model: torch.nn.Module) -> torch.nn.Module:
    """`torch.compile` for training. A model made of repeated blocks (one with `compile_blocks`, the GPT)
    compiles one block, once, in place (regional compilation: half the cold compile of the whole
    model on 2 cores, RESULTS.md); any other model is compiled whole, and the module returned."""
    if hasattr(model, "compile_blocks"):
        model.compile_blocks()
        return model
    return torch.compile(model)


def can_compile(device: torch.device, verbose: bool = True) -> bool:
    """torch.compile on the CPU needs a C++ compiler; without one, train eagerly instead of failing later."""
    if device.type == "cpu" and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        if verbose:
            print("note: train.compile=true needs a C++ compiler on the CPU (none found); training without compile")
        return False
    return True
