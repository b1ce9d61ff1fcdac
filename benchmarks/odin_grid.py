"""ODIN grid benchmark: the shared-gradient grid (one backward pass per temperature) vs the naive grid
(one backward pass per cell), on the original's 4 x 10 grid, same model and inputs, same scores.

Model: lab1-cnn at CPU width (depth 9, width 16) on 1x28x28 inputs (weights do not change the
timing). Run it alone on an idle machine:

    .venv/bin/python benchmarks/odin_grid.py [--n 1000 --repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dla.analysis.ood import odin_grid, odin_grid_naive
from dla.analysis.ood_study import ODIN_EPSILONS, ODIN_TEMPERATURES
from dla.models import build_model
from dla.models.cnn import CNNConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="images scored")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = build_model(CNNConfig(depth=9, width=16, fc_width=256), (1, 28, 28), 10, (0.286,), (0.353,)).eval()
    x = torch.rand(args.n, 1, 28, 28)
    times = {"naive": [], "shared": []}
    for _ in range(args.repeats):
        for name, fn in (("naive", odin_grid_naive), ("shared", odin_grid)):
            t0 = time.perf_counter()
            scores = fn(model, x, ODIN_TEMPERATURES, ODIN_EPSILONS)
            times[name].append(time.perf_counter() - t0)
            if name == "naive":
                reference = scores
            else:
                worst = max(float((scores[k] - reference[k]).abs().max()) for k in scores)
    naive, shared = statistics.median(times["naive"]), statistics.median(times["shared"])
    cells = len(ODIN_TEMPERATURES) * len(ODIN_EPSILONS)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {cells}-cell grid on {args.n} images")
    print("| grid | wall time (s, median) | speed-up |")
    print("|---|---:|---:|")
    print(f"| naive (one backward per cell) | {naive:.2f} | 1.0x |")
    print(f"| shared (one backward per T) | {shared:.2f} | {naive / shared:.1f}x |")
    print(f"largest score difference between the two: {worst:.2e}")


if __name__ == "__main__":
    main()
