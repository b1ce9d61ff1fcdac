"""Dense vs Mixture-of-Experts vs Mixture-of-Depths in the Lab 2.1 GPT, on the Inferno (character level).

    python benchmarks/gpt_moe_mod.py [--seeds 3] [--steps 1400] [--corpus inferno|agnews] [--out DIR]

`--corpus agnews`: the same comparison on a corpus about 10x the Inferno, the AG News articles
(`../shared/data/ag_news/test.csv`, or --agnews FILE), written as text (each article's title and
description, one per line) and trained on through `data.path`, split 80/10/10 as the Inferno is.

Arms, each `dla train lab2-gpt-char` as it runs by default on this machine (same data, same order of
batches for a given seed, same schedule and steps):
- dense: the model of RESULTS.md;
- MoE: the MLP of blocks 2 and 4 as 8 experts of width hidden / 2, top-2 (`model.moe_experts=8
  model.moe_top_k=2`): the active parameters and FLOPs per token of the dense model;
- MoD: blocks 2 and 4 take 12.5% of the tokens of each sequence (`model.mod_capacity=0.125`); the
  validation and test losses use the causal router, the top-k loss is reported apart (non-causal).

For each arm and seed: the best validation loss, the test loss, training tokens/s (optimiser steps
only, evaluations excluded), the train/val gap at the best round, and, read off each run's curve,
the best validation loss reached within the wall-clock budgets of RESULTS (90 s and 300 s from
process start). Run it alone on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARMS = {
    "dense": [],
    "MoE (E=8, top-2)": ["model.moe_experts=8", "model.moe_top_k=2"],
    "MoD (12.5%, every other block)": ["model.mod_capacity=0.125"],
}
BUDGETS = (90, 300)


def run_arm(overrides: list[str], seed: int, runs: Path, name: str, steps: int, data_root: str | None,
            keep: Path) -> dict:
    cmd = [sys.executable, "-m", "dla", *(["--data-root", data_root] if data_root else []), "train", "lab2-gpt-char",
           f"seed={seed}", f"train.max_steps={steps}", "track.tracker=none", f"runs_dir={runs}", f"run_name={name}",
           *overrides]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    wall = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    run = runs / "lab2-gpt-char" / name
    keep.mkdir(parents=True, exist_ok=True)  # what RESULTS quotes: the sample, the routing plot, the records
    for part in ("sample.txt", "summary.json", "metrics.jsonl", "plots/routing.png", "plots/curves.png"):
        if (run / part).is_file():
            shutil.copy(run / part, keep / part.replace("/", "-"))
    summary = json.loads((run / "summary.json").read_text())
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps_time = sum(r["steps_time_s"] for r in history)
    import yaml

    config = yaml.safe_load((run / "config.yaml").read_text())
    config_tokens = summary["steps"] * config["train"]["batch_size"] * config["data"]["block_size"]
    best = min(history, key=lambda r: r["val_loss"])
    # wall time of each evaluation from process start: start-up, then the rounds' cumulative time
    points = [(summary.get("startup_s", 0.0) + r["elapsed_s"], r["val_loss"]) for r in history]
    within = {b: min((v for t, v in points if t <= b), default=None) for b in BUDGETS}
    return {"seed": seed, "best_val_loss": best["val_loss"], "test_loss": summary["test_loss"],
            "gap": best["val_loss"] - best["train_loss"], "tokens_per_s": config_tokens / steps_time,
            "train_time_s": summary["train_time_s"], "wall_s": wall, "within": within, "points": points,
            "params": summary["params"], "params_active": summary.get("params_active", summary["params"]),
            "topk_noncausal": best.get("val_loss_topk_noncausal"),
            "routed_share": {k: v for k, v in best.items() if k.endswith("_routed_share")},
            "max_load": {k: v for k, v in best.items() if k.endswith("_max_load")}}


def mean_std(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} +- {statistics.stdev(values):.4f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1400, help="optimiser steps of every run (lab2-gpt-char's)")
    parser.add_argument("--data-root", help="where the Inferno was imported (default: dla's)")
    parser.add_argument("--corpus", choices=["inferno", "agnews"], default="inferno")
    parser.add_argument("--agnews", default=str(REPO.parent / "shared" / "data" / "ag_news" / "test.csv"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "gpt_moe_mod"))
    args = parser.parse_args()
    if args.seeds < 1 or args.steps < 1:
        parser.error("--seeds and --steps must be >= 1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    with tempfile.TemporaryDirectory() as tmp:
        corpus = []
        if args.corpus == "agnews":
            sys.path.insert(0, str(REPO / "src"))
            from dla.data.textpairs import read_articles

            articles = read_articles(Path(args.agnews))
            text = Path(tmp) / "agnews.txt"
            text.write_text("".join(f"{t}. {d}\n" for t, d in zip(articles.titles, articles.descriptions)))
            corpus = [f"data.path={text}", "data.download=false"]
            print(f"AG News as text: {len(articles)} articles, {len(text.read_text()):,} characters", flush=True)
        for seed in range(args.seeds):  # seeds outermost: a stopped benchmark still has every arm at seed 0
            for arm, overrides in ARMS.items():
                name = f"{arm.split()[0].lower()}-seed{seed}"
                print(f"{arm}, seed {seed}: dla train lab2-gpt-char {' '.join([*corpus, *overrides])}", flush=True)
                r = run_arm([*corpus, *overrides], seed, Path(tmp), name, args.steps, args.data_root, out / "runs" / name)
                results[arm].append(r)
                print(f"    best val {r['best_val_loss']:.4f}, test {r['test_loss']:.4f}, {r['tokens_per_s']:,.0f} "
                      f"tokens/s, {r['wall_s']:.0f} s", flush=True)
            report(results, args, out, seed + 1)  # after every seed: a stopped benchmark keeps what it measured
    return 0


def report(results: dict[str, list[dict]], args: argparse.Namespace, out: Path, seeds: int) -> None:
    """results.md, results.json and the plot of the seeds run so far."""
    lines = [f"# Dense vs MoE vs MoD, lab2-gpt-char on {args.corpus}, {args.steps} steps, {seeds} seed(s), "
             f"{time.strftime('%Y-%m-%d')}",
             "", "| arm | params (active) | best val loss | test loss | train/val gap | tokens/s | "
             + " | ".join(f"best val within {b} s" for b in BUDGETS) + " |",
             "|---|---:|---:|---:|---:|---:|" + "---:|" * len(BUDGETS)]
    for arm, rs in results.items():
        p, a = rs[0]["params"], rs[0]["params_active"]
        lines.append(f"| {arm} | {p:,} ({a:,}) | {mean_std([r['best_val_loss'] for r in rs])} | "
                     f"{mean_std([r['test_loss'] for r in rs])} | {mean_std([r['gap'] for r in rs])} | "
                     f"{statistics.mean(r['tokens_per_s'] for r in rs):,.0f} | "
                     + " | ".join(mean_std([r["within"][b] for r in rs]) for b in BUDGETS) + " |")
    mod = results[next(a for a in ARMS if a.startswith("MoD"))]
    lines += ["", f"MoD: validation loss with the non-causal top-k routing {mean_std([r['topk_noncausal'] for r in mod])} "
              f"(the causal one above); routed share at the best round "
              + ", ".join(f"{k} {statistics.mean(r['routed_share'][k] for r in mod):.3f}" for k in mod[0]["routed_share"])]
    moe = results[next(a for a in ARMS if a.startswith("MoE"))]
    lines.append("MoE: max/mean load at the best round "
                 + ", ".join(f"{k} {statistics.mean(r['max_load'][k] for r in moe):.2f}" for k in moe[0]["max_load"]))
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text("\n".join(lines) + "\n")
    plot(results, out / "val_loss_vs_time.png")
    print("\n".join(lines), flush=True)
    print(f"wrote {out / 'results.md'}, {out / 'results.json'}, {out / 'val_loss_vs_time.png'}")


def plot(results: dict[str, list[dict]], path: Path) -> None:
    sys.path.insert(0, str(REPO / "src"))
    from dla.report.plots import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for arm, rs in results.items():
        for i, r in enumerate(rs):
            t, v = zip(*r["points"])
            ax.plot(t, v, color=f"C{list(results).index(arm)}", alpha=0.8, linewidth=1.2, label=arm if i == 0 else None)
    for b in BUDGETS:
        ax.axvline(b, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("seconds from process start")
    ax.set_ylabel("validation loss (nats/char)")
    ax.set_ylim(top=1.9)
    ax.legend(fontsize=8)
    ax.set_title("lab2-gpt-char: dense vs MoE vs MoD, every seed", fontsize=9)
    save_figure(fig, path)


if __name__ == "__main__":
    raise SystemExit(main())
