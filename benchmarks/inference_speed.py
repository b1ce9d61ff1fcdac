"""Inference speed of trained image classifiers (the distillation study's teacher and students).

For each run: its parameters and test images per second (the run's precision where the CPU has bf16
natively, channels_last; batches of --batch), the median of --repeats passes over --n test images
after one warm-up pass. Run it alone on an idle machine:

    python benchmarks/inference_speed.py runs/lab1-cnn/teacher runs/lab1-distill/distill-s0 ...
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dla.build import load_run_model
from dla.data.batches import to_unit_float
from dla.data.vision import default_data_root, load_arrays
from dla.device import autocast, cpu_has_bf16, prepare_input
from dla.models import count_parameters
from dla.rundir import RunDir


def images_per_s(model, x: torch.Tensor, batch: int, repeats: int, precision: str) -> float:
    def one_pass() -> float:
        started = time.perf_counter()
        with torch.inference_mode(), autocast(x.device, precision):
            for i in range(0, len(x), batch):
                model(prepare_input(x[i : i + batch], True))
        return len(x) / (time.perf_counter() - started)

    one_pass()
    return statistics.median(one_pass() for _ in range(repeats))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--n", type=int, default=5000, help="test images per pass")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if min(args.n, args.batch, args.repeats) < 1:
        ap.error("--n, --batch and --repeats must be >= 1")
    precision = "bf16" if cpu_has_bf16() else "fp32"
    print(f"{torch.get_num_threads()} threads, {precision}, batches of {args.batch}, {args.n} test images\n")
    print("| run | params | images/s |")
    print("|---|---:|---:|")
    cache: dict[str, torch.Tensor] = {}
    for path in args.runs:
        model, cfg = load_run_model(RunDir.open(path))
        model = model.to(memory_format=torch.channels_last)
        if cfg.data.name not in cache:
            _, test, _ = load_arrays(cfg.data.name, default_data_root(), False)
            cache[cfg.data.name] = to_unit_float(test.x[: args.n])
        rate = images_per_s(model, cache[cfg.data.name], args.batch, args.repeats, precision)
        print(f"| {path} | {count_parameters(model):,} | {rate:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
