"""How strong is `dla attack --method cw`? APGD-CE in L2 (torchattacks, 100 iterations) on the same images.

    python benchmarks/cw_vs_apgd_l2.py runs/lab1-cnn/fashion-d9-pgd [RUN ...] [--n 500] [--data-root DIR]

For each run: the accuracy left at L2 radii 0.5, 1 and 2 under APGD-CE (one restart), on the first
`--n` test images of the fixed shuffle that `dla attack RUN --method cw --n N` attacks. Compare it
with that command's table: a cell where APGD leaves less accuracy than CW is one where CW is an
upper bound, not the model's robustness.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torchattacks

from dla.build import load_data, load_run_model
from dla.data.batches import to_unit_float
from dla.data.ood import sample
from dla.data.vision import default_data_root
from dla.rundir import RunDir

RADII = (0.5, 1.0, 2.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--data-root", type=Path, default=None)
    args = parser.parse_args()
    print(f"| run | images | {' | '.join(f'APGD-CE L2 <= {r:g} (%)' for r in RADII)} |")
    print(f"|---|---:|{'---:|' * len(RADII)}")
    for path in args.runs:
        model, cfg = load_run_model(RunDir(Path(path)))
        test = sample(load_data(cfg, args.data_root or default_data_root(), quiet=True).test, args.n, 0)
        x, y = to_unit_float(test.x), test.y
        cells = []
        for radius in RADII:
            attack = torchattacks.APGD(model, norm="L2", eps=radius, steps=100, n_restarts=1, loss="ce", seed=0)
            right = 0
            for i in range(0, len(y), 250):
                adv = attack(x[i : i + 250], y[i : i + 250])
                with torch.no_grad():
                    right += int((model(adv).argmax(1) == y[i : i + 250]).sum())
            cells.append(f"{100 * right / len(y):.1f}")
        print(f"| {path} | {len(y)} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
