"""Lab 1.2 CNN training throughput: dla's fastest CPU settings vs plain fp32 NCHW eager, same module.

Model: `original_cnn(17, residual)` (the original lab's depth-17 net, width 64), 3x32x32 inputs,
batch 64, SGD steps (forward, backward, update). Modes:

  fp32-nchw       the baseline: fp32, contiguous NCHW tensors, eager
  bf16            bf16 autocast only
  fp32-cl         channels_last only
  bf16-cl         bf16 autocast + channels_last: dla's setting (train.precision=bf16 train.channels_last=true)

It prints images/s (median of repeats), the ratio to the baseline and the achieved GFLOP/s of
the training step (FLOPs counted by torch.utils.flop_counter). With --accuracy it also trains a
short Fashion-MNIST run in fp32 and in bf16 through `dla` and prints both test accuracies.
With --grid it measures the six nets of the Lab 1.2 grid (depth 9/17/48, plain and residual) at
--width (the CIFAR-10 CPU study's choice of width), fp32 NCHW against bf16 + channels_last, and
with --compile also bf16 + channels_last under torch.compile, with the seconds one epoch of
45,000 CIFAR-10 training images would take at that rate. Run it alone on an idle machine:

    .venv/bin/python benchmarks/cnn_throughput.py [--residual] [--steps 8 --repeats 3] [--accuracy]
    .venv/bin/python benchmarks/cnn_throughput.py --grid --width 16 [--compile]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from dla.data.vision import default_data_root
from dla.models.cnn import CNN, CNNConfig, original_cnn

MODES = {
    "fp32-nchw": (False, False),
    "bf16": (True, False),
    "fp32-cl": (False, True),
    "bf16-cl": (True, True),
}


def step_fn(model, opt, x, y, bf16: bool):
    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def train_flops(residual: bool, batch: int) -> int:
    model = original_cnn(17, residual)
    x, y = torch.rand(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops()


def measure(mode: str, residual: bool, batch: int, steps: int, repeats: int, depth: int = 17, width: int = 64,
            compile: bool = False) -> float:
    bf16, channels_last = MODES[mode]
    torch.manual_seed(0)
    model = original_cnn(depth, residual) if width == 64 else CNN(CNNConfig(depth=depth, residual=residual, width=width), 3, 10)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    if compile:
        model = torch.compile(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(batch, 3, 32, 32).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,))
    step = step_fn(model, opt, x, y, bf16)
    for _ in range(2):
        step()
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        rates.append(steps * batch / (time.perf_counter() - t0))
    return statistics.median(rates)


def accuracy_check() -> None:
    from dla import experiment
    from dla.config import load_experiment

    print("\nshort Fashion-MNIST run (budget=cpu: width 16, channels_last), depth 17 residual,"
          " 3 epochs on 20k images:")
    for precision in ("fp32", "bf16"):
        with tempfile.TemporaryDirectory() as runs:
            cfg = load_experiment(
                "lab1-cnn",
                ["budget=cpu", "data=fashion-mnist", "model.depth=17", "model.residual=true", "train.epochs=3",
                 "data.train_subset=20000", f"train.precision={precision}", "track.tracker=none",
                 "train.grad_stats_every=null", f"runs_dir={runs}"],
            )
            run = experiment.train(cfg, default_data_root())
            s = run.read_summary()
            print(f"ACCURACY {precision}: test acc {100 * s['test_acc']:.2f}%  test loss {s['test_loss']:.4f}  "
                  f"train time {s['train_time_s']:.1f}s")


def grid(args) -> None:
    """images/s of each net of the depth grid at one width: fp32 NCHW, bf16 + channels_last (and compiled)."""
    modes = [("fp32-nchw", False), ("bf16-cl", False)] + ([("bf16-cl", True)] if args.compile else [])
    names = ["fp32 NCHW", "bf16 + cl"] + (["bf16 + cl, compiled"] if args.compile else [])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; width {args.width}, batch {args.batch}, 3x32x32")
    print(f"\n| net | params | {' | '.join(f'{n} (img/s)' for n in names)} | best vs fp32 | s per 45k-image epoch (best) |")
    print("|---|---:|" + "---:|" * len(names) + "---:|---:|")
    for depth in (9, 17, 48):
        for residual in (False, True):
            params = sum(p.numel() for p in CNN(CNNConfig(depth=depth, residual=residual, width=args.width), 3, 10).parameters())
            rates = [measure(m, residual, args.batch, args.steps, args.repeats, depth, args.width, c) for m, c in modes]
            best = max(rates)
            cells = " | ".join(f"{r:.0f}" for r in rates)
            name = f"Depth-{depth}{'-skip' if residual else ''}"
            print(f"| {name} | {params:,} | {cells} | {best / rates[0]:.2f}x | {45000 / best:.0f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--residual", action="store_true")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--accuracy", action="store_true", help="also compare fp32 and bf16 accuracy on a short run")
    ap.add_argument("--grid", action="store_true", help="the six nets of the depth grid at --width")
    ap.add_argument("--width", type=int, default=16, help="--grid: channels of the first stage")
    ap.add_argument("--compile", action="store_true", help="--grid: also bf16 + channels_last under torch.compile")
    args = ap.parse_args()
    if args.grid:
        return grid(args)
    flops = train_flops(args.residual, args.batch) / args.batch
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; original_cnn(17, residual={args.residual}),"
          f" batch {args.batch}, {flops / 1e9:.2f} GFLOP per image per training step")
    results = {m: measure(m, args.residual, args.batch, args.steps, args.repeats) for m in MODES}
    base = results["fp32-nchw"]
    print("\n| mode | images/s | speed-up vs fp32 NCHW | GFLOP/s |")
    print("|---|---:|---:|---:|")
    for mode, rate in results.items():
        print(f"| {mode} | {rate:.1f} | {rate / base:.2f}x | {rate * flops / 1e9:.0f} |")
    if args.accuracy:
        accuracy_check()


if __name__ == "__main__":
    main()
