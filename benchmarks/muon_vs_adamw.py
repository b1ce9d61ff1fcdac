"""Muon against AdamW on the Lab 2.1 character GPT (the Inferno), at equal wall time, in one run.

    python benchmarks/muon_vs_adamw.py [--preset cpu-short] [--muon-lr 0.02]

Both train `dla train lab2-gpt-char budget=PRESET` with the same data, model, schedule, steps and
seed; only `optim.name` changes: `adamw` (every parameter on AdamW at the preset's lr) against
`muon` (the hidden 2-D weight matrices on Muon at --muon-lr, embeddings/head, norm gains and
biases on AdamW at the preset's lr). For each wall-clock budget the best validation loss either
has reached by then (training time from its metrics.jsonl, evaluation included) is compared.

Run it alone on an idle machine: anything else running skews both sides.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def train(root: Path, runs: Path, name: str, overrides: list[str]) -> tuple[list[dict], dict]:
    cmd = [sys.executable, "-m", "dla", "--data-root", str(root), "train", "lab2-gpt-char", "track.tracker=none",
           f"runs_dir={runs}", f"run_name={name}", *overrides]
    print(" ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)
    run = runs / "lab2-gpt-char" / name
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()], json.loads(
        (run / "summary.json").read_text())


def best_by(history: list[dict], seconds: float) -> float | None:
    seen = [r["val_loss"] for r in history if r["elapsed_s"] <= seconds]
    return min(seen) if seen else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu-short", help="the lab2-gpt-char budget preset (default cpu-short)")
    parser.add_argument("--muon-lr", type=float, default=0.02)
    parser.add_argument("--inferno", default=str(REPO.parent / "shared" / "data" / "inferno" / "inferno.txt"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "muon_vs_adamw"))
    args = parser.parse_args()
    if not Path(args.inferno).is_file():
        print(f"skipped: no Inferno text at {args.inferno} (--inferno PATH)")
        return 0
    sys.path.insert(0, str(REPO / "src"))
    from dla.data.text import import_inferno

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        root, runs = Path(tmp) / "data", Path(tmp) / "runs"
        import_inferno(Path(args.inferno), root)
        base = [f"budget={args.preset}"]
        results = {}
        for label, extra in (("AdamW", ["optim.name=adamw"]),
                             (f"Muon (lr {args.muon_lr}) + AdamW", ["optim.name=muon", f"optim.muon_lr={args.muon_lr}"])):
            history, summary = train(root, runs, label.split()[0].lower(), [*base, *extra])
            results[label] = {"history": history, "summary": summary}
    labels = list(results)
    end = min(results[k]["history"][-1]["elapsed_s"] for k in labels)
    budgets = sorted({round(end * f) for f in (0.25, 0.5, 0.75, 1.0)})
    lines = [f"# Muon vs AdamW, lab2-gpt-char budget={args.preset}, {time.strftime('%Y-%m-%d')}", "",
             "Best validation loss (nats/char) reached within each training time (evaluation included):", "",
             f"| seconds | {' | '.join(labels)} |", "|---:|" + "---:|" * len(labels)]
    for b in budgets:
        cells = [best_by(results[k]["history"], b) for k in labels]
        lines.append(f"| {b} | " + " | ".join("-" if c is None else f"{c:.4f}" for c in cells) + " |")
    lines += ["", "| optimiser | steps | training time (s) | best val loss | test loss | test bits/char |",
              "|---|---:|---:|---:|---:|---:|"]
    for k in labels:
        s = results[k]["summary"]
        lines.append(f"| {k} | {s['steps']} | {s['train_time_s']:.1f} | {s['best_val_loss']:.4f} | "
                     f"{s['test_loss']:.4f} | {s['test_bpc']:.4f} |")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out / 'results.md'}, {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
