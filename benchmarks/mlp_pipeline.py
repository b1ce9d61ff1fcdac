"""Lab 1.1 pipeline benchmark: dla vs a conventional torchvision + DataLoader pipeline, same MLP.

The model is the seed lab's MLP, 784-784-10 with ReLU and dropout 0.2, trained on Fashion-MNIST:

  conventional   torchvision FashionMNIST with per-sample ToTensor + Normalize, DataLoader(2 workers),
                 a plain loop; Adam 1e-3, batch 128, fp32
  dla-same       `dla train` with the same recipe (Adam 1e-3, batch 128, fp32): the pipeline alone
  dla-best       `dla train` with dla's best recipe for this model (see BEST below)

It prints seconds per epoch (median over epochs and repeats), the ratio to the conventional
pipeline, and the training wall time until test accuracy first reaches 88% (checked after each
epoch, outside the timer, for every pipeline alike). Run it alone on an idle machine:

    make bench      (or .venv/bin/python benchmarks/mlp_pipeline.py --repeats 3)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from dla import build, experiment
from dla.config import load_experiment
from dla.data.vision import default_data_root, import_dataset, locate
from dla.device import make_accelerator
from dla.train.callbacks import Callback
from dla.train.tasks import evaluate

TARGET = 0.88
COMMON = [
    "data=fashion-mnist",
    "model.hidden=[784]",
    "model.dropout=0.2",
    "data.val_size=5000",
    "train.patience=null",
    "train.label_smoothing=0",
    "track.tracker=none",
    "data.download=false",
]
SAME = ["optim.name=adam", "optim.lr=1e-3", "optim.weight_decay=0", "sched.name=none", "train.batch_size=128"]
BEST = ["optim.name=adamw", "optim.lr=3e-3", "sched.name=onecycle", "sched.warmup_frac=0.25", "train.batch_size=256",
        "train.precision=bf16"]


def fashion_root() -> Path:
    """A data root holding Fashion-MNIST in torchvision's layout (imported from Debian's copy if needed)."""
    root = default_data_root()
    loc = locate("fashion-mnist", root)
    if loc.source != "data root" or loc.status != "present":
        import_dataset("fashion-mnist", loc.directory or Path("/usr/share/datasets/fashion-mnist"), root)
    return root


class TestAccuracy(Callback):
    """Test accuracy after each epoch (not timed: fit's clock stops before callbacks run)."""

    def __init__(self, test, accelerator):
        self.test, self.accelerator, self.curve = test, accelerator, []

    def on_epoch_end(self, record, model):
        acc = evaluate(model, self.test, self.accelerator, 2048)["acc"]
        self.curve.append((record["elapsed_s"], record["epoch_time_s"], acc))
        model.train()


def run_dla(root: Path, recipe: list[str], epochs: int) -> list[tuple[float, float, float]]:
    cfg = load_experiment("lab1-mlp", [*COMMON, *recipe, f"train.epochs={epochs}"])
    with tempfile.TemporaryDirectory() as runs:
        cfg.runs_dir = runs
        data = build.load_data(cfg, root)
        probe = TestAccuracy(data.test, make_accelerator(cfg.train))
        experiment.train(cfg, root, callbacks=[probe])
    return probe.curve


def run_conventional(root: Path, epochs: int) -> list[tuple[float, float, float]]:
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.2860,), (0.3530,))])
    train_full = datasets.FashionMNIST(str(root), train=True, download=False, transform=tf)
    test = datasets.FashionMNIST(str(root), train=False, download=False, transform=tf)
    gen = torch.Generator().manual_seed(0)
    train, _ = torch.utils.data.random_split(train_full, [55000, 5000], generator=gen)
    loader = torch.utils.data.DataLoader(train, batch_size=128, shuffle=True, num_workers=2, persistent_workers=True)
    test_loader = torch.utils.data.DataLoader(test, batch_size=1024, num_workers=2)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 784), nn.ReLU(), nn.Dropout(0.2), nn.Linear(784, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    curve, elapsed = [], 0.0
    for _ in range(epochs):
        model.train()
        t0 = time.perf_counter()
        for x, y in loader:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
        dt = time.perf_counter() - t0
        elapsed += dt
        model.eval()
        with torch.no_grad():
            correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in test_loader)
        curve.append((elapsed, dt, correct / len(test)))
        if correct / len(test) >= TARGET:
            break
    return curve


def summarise(curves: list[list[tuple[float, float, float]]]) -> tuple[float, float | None, float]:
    per_epoch = statistics.median(dt for c in curves for _, dt, _ in c)
    hits = [next((t for t, _, acc in c if acc >= TARGET), None) for c in curves]
    reached = [h for h in hits if h is not None]
    to_target = statistics.median(reached) if len(reached) == len(hits) else None
    best = statistics.median(max(acc for _, _, acc in c) for c in curves)
    return per_epoch, to_target, best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="runs of each dla pipeline (medians are reported)")
    ap.add_argument("--conventional-repeats", type=int, default=1, help="runs of the slow baseline")
    ap.add_argument("--epochs-same", type=int, default=10, help="epochs for dla-same")
    ap.add_argument("--epochs-best", type=int, default=5, help="epochs for dla-best (its one-cycle schedule spans them)")
    ap.add_argument("--conventional-epochs", type=int, default=15, help="at most; it stops once it reaches 88%%")
    args = ap.parse_args()
    root = fashion_root()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, Fashion-MNIST from {root}")
    results = {}
    for name, fn, repeats in (
        ("conventional", lambda: run_conventional(root, args.conventional_epochs), args.conventional_repeats),
        ("dla-same", lambda: run_dla(root, SAME, args.epochs_same), args.repeats),
        ("dla-best", lambda: run_dla(root, BEST, args.epochs_best), args.repeats),
    ):
        curves = [fn() for _ in range(repeats)]
        results[name] = summarise(curves)
        print(f"{name}: " + "; ".join(" ".join(f"{acc:.4f}" for _, _, acc in c) for c in curves), flush=True)
    base_epoch, base_target, _ = results["conventional"]
    print("\n| pipeline | s/epoch (median) | speed-up per epoch | time to 88% test acc (s) | speed-up to 88% | best test acc |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (per_epoch, to_target, best) in results.items():
        target = f"{to_target:.2f}" if to_target is not None else "not reached"
        speed = f"{base_target / to_target:.1f}x" if to_target and base_target else "-"
        print(f"| {name} | {per_epoch:.2f} | {base_epoch / per_epoch:.1f}x | {target} | {speed} | {100 * best:.2f} |")
    print(f"\nrecipes: same = {' '.join(SAME)}; best = {' '.join(BEST)}")


if __name__ == "__main__":
    main()
