"""dla's Lab 2.1 GPT against nanoGPT on the Inferno, character level, on this machine.

    python benchmarks/gpt_vs_nanogpt.py --nanogpt PATH_TO_NANOGPT_CHECKOUT

No nanoGPT code is in this repository: the script runs an existing checkout's own `train.py`
(`git clone https://github.com/karpathy/nanoGPT`) on the same data, written in its format
(train.bin / val.bin / meta.pkl of the same 90/10 character split dla uses with split=nanogpt).

Part 1, same configuration: nanoGPT's "baby GPT" CPU settings (4 layers, 4 heads, width 128,
block 64, batch 12, lr 1e-3, no dropout, eval every 250 iterations over 20 batches) for the same
number of iterations in both; ms/iter (median of the steady-state steps), tokens/s, and the wall
time from process start to the step-2,000 evaluation and to the end of the process (dla's end
includes its final test scoring and sample; nanoGPT has neither). dla runs as it would by default on
this machine (train.precision=auto, train.compile=auto: bf16 and compilation only where the CPU has
bf16 units); the table says what that chose.
Part 2, start-up: seconds from process start to the end of the first optimiser step (imports, data
preparation, model, compilation), the median of --repeats launches each, stopped once that step is
done: nanoGPT (its "iter 0" line, after its step-0 evaluation of 2 x 20 batches), dla eager, dla
compiled with an empty inductor cache (cold) and again with the cache that run left (warm).
Part 3, wall-clock budgets: validation loss against wall time (from process start, so start-up
and compilation count) for nanoGPT's baby runs and for dla's CPU recipes. For each budget from 90 s
to 300 s the best validation loss either side has reached by then is compared.

Run it alone on an idle machine: anything else running skews both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from dla.data.text import CharTokenizer, import_inferno, split_text  # noqa: E402
from dla.device import cpu_description  # noqa: E402

BABY = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, lr=1e-3, eval_every=250, eval_batches=20)
# dla at the baby configuration, executed as by default on this machine (bf16 + compile where the CPU has bf16 units)
DLA_BABY_FAST = ["budget=baby", "train.precision=auto", "train.compile=auto"]
# the start-up part's compiled launches (cold and warm inductor cache)
DLA_BABY_COMPILED = ["budget=baby", "train.precision=auto", "train.compile=true"]
DLA_BABY_PLAIN = ["budget=baby", "train.precision=fp32", "train.compile=false"]
# dla's CPU recipes for the wall-clock comparison (the `cpu` and `cpu-short` presets of lab2-gpt-char)
DLA_RECIPES = {"dla cpu (300 s)": ["budget=cpu"], "dla cpu-short (90 s)": ["budget=cpu-short"]}
BUDGETS = [90, 120, 150, 180, 210, 240, 270, 300]

NANO_VAL = re.compile(r"step (\d+): train loss ([\d.]+), val loss ([\d.]+)")
NANO_ITER = re.compile(r"iter (\d+): loss [\d.]+, time ([\d.]+)ms")
NANO_FIRST = re.compile(r"iter 0: loss")
DLA_FIRST = re.compile(r"first step done")
DLA_VAL = re.compile(r"^step\s+(\d+)\s+train loss ([\d.]+) .*val loss ([\d.]+)")


def stream(cmd: list[str], cwd: Path, limit_s: float, pattern: re.Pattern, env: dict) -> tuple[list[dict], list[str], float]:
    """Run `cmd`, timestamp each output line as it arrives; stop it after `limit_s` seconds."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1)
    points, lines = [], []
    try:
        for line in proc.stdout:
            now = time.perf_counter() - started
            lines.append(line.rstrip())
            m = pattern.search(line)
            if m:
                points.append({"step": int(m.group(1)), "train_loss": float(m.group(2)), "val_loss": float(m.group(3)),
                               "wall_s": round(now, 2)})
                print(f"    {now:6.1f}s  step {m.group(1):>5}  val loss {m.group(3)}", flush=True)
            if now > limit_s:
                proc.kill()
                break
    finally:
        proc.wait()
    wall = time.perf_counter() - started
    if proc.returncode not in (0, -9) and not points:
        print("\n".join(lines[-20:]), file=sys.stderr)
        raise SystemExit(f"{cmd[:3]} failed with exit code {proc.returncode}")
    return points, lines, wall


def time_to_match(cmd: list[str], cwd: Path, pattern: re.Pattern, env: dict, limit_s: float = 600) -> float:
    """Seconds from launching `cmd` until it prints a line matching `pattern`; then it is stopped."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line.rstrip())
            if pattern.search(line):
                return time.perf_counter() - started
            if time.perf_counter() - started > limit_s:
                break
    finally:
        proc.kill()
        proc.wait()
    print("\n".join(lines[-20:]), file=sys.stderr)
    raise SystemExit(f"{cmd[:3]} never printed {pattern.pattern!r}")


def prepare(nanogpt: Path, inferno: Path, work: Path) -> tuple[Path, Path]:
    """nanoGPT's working folder (its data format, its configurator) and a dla data root."""
    text = inferno.read_text()
    tok = CharTokenizer.train(text)
    train, val, _ = split_text(text, [0.9, 0.1, 0.0])  # the same cut as dla's split=nanogpt
    nano = work / "nanogpt"
    data = nano / "data" / "inferno_char"
    data.mkdir(parents=True)
    np.array(tok.encode(train), dtype=np.uint16).tofile(data / "train.bin")
    np.array(tok.encode(val), dtype=np.uint16).tofile(data / "val.bin")
    with open(data / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": tok.vocab_size, "itos": dict(enumerate(tok.chars)), "stoi": tok.index}, f)
    (nano / "configurator.py").symlink_to(nanogpt / "configurator.py")  # train.py execs it from the cwd
    root = work / "dla-data"
    import_inferno(inferno, root)
    return nano, root


def nanogpt_cmd(nanogpt: Path, out: Path, iters: int) -> list[str]:
    b = BABY
    return [
        sys.executable, str(nanogpt / "train.py"), str(nanogpt / "config" / "train_shakespeare_char.py"),
        "--dataset=inferno_char", "--device=cpu", "--compile=False", f"--eval_iters={b['eval_batches']}",
        "--log_interval=1", f"--block_size={b['block_size']}", f"--batch_size={b['batch_size']}",
        f"--n_layer={b['n_layer']}", f"--n_head={b['n_head']}", f"--n_embd={b['n_embd']}", f"--max_iters={iters}",
        f"--lr_decay_iters={iters}", "--dropout=0.0", f"--out_dir={out}",
    ]


def dla_cmd(root: Path, runs: Path, name: str, overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "dla", "--data-root", str(root), "train", "lab2-gpt-char", "split=nanogpt",
            "track.tracker=none", f"runs_dir={runs}", f"run_name={name}", *overrides]


def nano_ms_per_iter(lines: list[str]) -> float:
    times = [(int(m.group(1)), float(m.group(2))) for m in map(NANO_ITER.search, lines) if m]
    steady = [t for i, t in times if i >= 10 and i % BABY["eval_every"]]  # not the evaluation iterations
    return statistics.median(steady)


def dla_ms_per_iter(run: Path) -> float:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    per_round = []
    for prev, rec in zip([{"step": 0}, *records], records):
        per_round.append(1000 * rec["steps_time_s"] / (rec["step"] - prev["step"]))
    return statistics.median(per_round[1:] or per_round)  # the first round includes compilation


def step_time(run: dict, step: int) -> float | None:
    """Seconds from process start to the evaluation line of `step` in a streamed run."""
    return next((p["wall_s"] for p in run["points"] if p["step"] == step), None)


def envelope(points: list[dict], at: float) -> float | None:
    """The lowest validation loss reached by wall time `at`."""
    seen = [p["val_loss"] for p in points if p["wall_s"] <= at]
    return min(seen) if seen else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nanogpt", default=os.environ.get("NANOGPT_DIR"), help="a nanoGPT checkout (or $NANOGPT_DIR)")
    parser.add_argument("--inferno", default=str(REPO.parent / "shared" / "data" / "inferno" / "inferno.txt"))
    parser.add_argument("--iters", type=int, default=2000, help="iterations of the same-configuration runs")
    parser.add_argument("--long-iters", type=int, default=7000, help="nanoGPT's long baby run (cut at the budget)")
    parser.add_argument("--budget", type=float, default=300.0, help="seconds for the wall-clock comparison")
    parser.add_argument("--plain", action="store_true", help="also run dla at the baby config without bf16/compile")
    parser.add_argument("--only", choices=["throughput", "startup", "budget"], help="run one part")
    parser.add_argument("--repeats", type=int, default=3, help="launches per system in the start-up part")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "gpt_vs_nanogpt"))
    args = parser.parse_args()
    if not args.nanogpt or not (Path(args.nanogpt) / "train.py").is_file():
        print("skipped: no nanoGPT checkout; pass --nanogpt PATH (git clone https://github.com/karpathy/nanoGPT)")
        return 0
    nanogpt, inferno = Path(args.nanogpt).resolve(), Path(args.inferno)
    if not inferno.is_file():
        print(f"skipped: no Inferno text at {inferno} (--inferno PATH)")
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result: dict = {"cpu": cpu_description(), "torch_threads": os.cpu_count(), "baby": BABY, "runs": {}}
    tokens_per_iter = BABY["batch_size"] * BABY["block_size"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        nano, root = prepare(nanogpt, inferno, work)
        runs = work / "runs"

        def nano_run(label: str, iters: int, limit: float) -> tuple[list[str], dict]:
            print(f"{label}: nanoGPT train.py, {iters} iterations", flush=True)
            points, lines, wall = stream(nanogpt_cmd(nanogpt, work / label, iters), nano, limit, NANO_VAL, env)
            result["runs"][label] = {"system": "nanoGPT", "iters": iters, "points": points, "wall_s": round(wall, 1)}
            return lines, result["runs"][label]

        def dla_run(label: str, overrides: list[str], limit: float) -> Path:
            name = re.sub(r"[^A-Za-z0-9]+", "-", label).strip("-")
            print(f"{label}: dla train lab2-gpt-char {' '.join(overrides)}", flush=True)
            points, _, wall = stream(dla_cmd(root, runs, name, overrides), REPO, limit, DLA_VAL, env)
            result["runs"][label] = {"system": "dla", "overrides": overrides, "points": points, "wall_s": round(wall, 1)}
            return runs / "lab2-gpt-char" / name

        if args.only in (None, "throughput"):
            lines, record = nano_run("nanoGPT baby", args.iters, 10_000)
            nano_ms = nano_ms_per_iter(lines)
            rows = [("nanoGPT train.py (fp32, eager)", nano_ms, record, {})]
            run = dla_run("dla baby (default execution)", [*DLA_BABY_FAST, f"train.max_steps={args.iters}"], 10_000)
            summary = json.loads((run / "summary.json").read_text())
            how = f"{summary['precision']}, {'compiled' if summary['compile'] else 'eager'}"
            rows.append((f"dla ({how}: train.precision=auto, train.compile=auto)", dla_ms_per_iter(run),
                         result["runs"]["dla baby (default execution)"], summary))
            if args.plain:
                run = dla_run("dla baby (fp32, eager)", [*DLA_BABY_PLAIN, f"train.max_steps={args.iters}"], 10_000)
                rows.append(("dla (fp32, eager)", dla_ms_per_iter(run), result["runs"]["dla baby (fp32, eager)"],
                             json.loads((run / "summary.json").read_text())))
            nano_at = step_time(record, args.iters)
            result["throughput"] = []
            for name, ms, rec, summ in rows:
                at = step_time(rec, args.iters)
                result["throughput"].append({
                    "system": name, "ms_per_iter": round(ms, 2), "tokens_per_s": round(1000 * tokens_per_iter / ms),
                    "ratio_vs_nanogpt": round(nano_ms / ms, 2), "step_s": at, "end_s": rec["wall_s"],
                    "wall_ratio_vs_nanogpt": round(nano_at / at, 2) if at and nano_at else None,
                    "val_loss": rec["points"][-1]["val_loss"] if rec["points"] else None,
                    **{k: summ[k] for k in ("startup_s", "first_step_s", "train_time_s", "finish_s") if k in summ}})
        if args.only in (None, "startup"):
            cache = work / "inductor-cache"  # empty: the first compiled launch is cold, the next ones warm
            steps = ["train.max_steps=2000"]
            systems = [
                ("nanoGPT train.py (fp32, eager)", nanogpt_cmd(nanogpt, work / "nano-startup", 2000), nano, NANO_FIRST, env),
                ("dla (fp32, eager)", dla_cmd(root, runs, "startup-eager", [*DLA_BABY_PLAIN, *steps]), REPO, DLA_FIRST, env),
            ]
            compiled = dla_cmd(root, runs, "startup-compiled", [*DLA_BABY_COMPILED, *steps])
            cache_env = {**env, "TORCHINDUCTOR_CACHE_DIR": str(cache)}
            rows = []
            for name, cmd, cwd, pattern, e in systems:
                times = [time_to_match(cmd, cwd, pattern, e) for _ in range(args.repeats)]
                rows.append((name, times))
                print(f"    {name}: first step after {statistics.median(times):.1f} s", flush=True)
            cold = [time_to_match(compiled, REPO, DLA_FIRST, cache_env)]
            rows.append(("dla (compiled), cold inductor cache", cold))
            warm = [time_to_match(compiled, REPO, DLA_FIRST, cache_env) for _ in range(args.repeats)]
            rows.append(("dla (compiled), warm inductor cache", warm))
            print(f"    dla compiled: cold {cold[0]:.1f} s, warm {statistics.median(warm):.1f} s", flush=True)
            result["startup"] = [{"system": n, "first_step_s": round(statistics.median(t), 2), "runs_s": [round(x, 2) for x in t]}
                                 for n, t in rows]
        if args.only in (None, "budget"):
            nano_run("nanoGPT baby long", args.long_iters, args.budget + 5)
            for label, overrides in DLA_RECIPES.items():
                dla_run(label, overrides, args.budget + 5)

    lines = [f"# dla vs nanoGPT on the Inferno (char level, 90/10 split), {time.strftime('%Y-%m-%d')}", "",
             f"CPU: {result['cpu']}", ""]
    if "throughput" in result:
        lines += [f"Same configuration (baby GPT), {args.iters} iterations, {tokens_per_iter} tokens/iter; wall times "
                  "from process start:", "",
                  f"| system | ms/iter (median) | tokens/s | vs nanoGPT | step {args.iters:,} at (s) | wall vs nanoGPT "
                  "| process end (s) | val loss |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        def num(value, spec: str, suffix: str = "") -> str:
            return "-" if value is None else f"{value:{spec}}{suffix}"

        lines += [f"| {r['system']} | {r['ms_per_iter']:.1f} | {r['tokens_per_s']:,} | {r['ratio_vs_nanogpt']:.2f}x | "
                  f"{num(r['step_s'], '.1f')} | {num(r['wall_ratio_vs_nanogpt'], '.2f', 'x')} | {num(r['end_s'], '.1f')} | "
                  f"{num(r['val_loss'], '.4f')} |" for r in result["throughput"]]
        dla_rows = [r for r in result["throughput"] if "finish_s" in r]
        lines += ["", *[f"{r['system']}: start-up {r['startup_s']:.1f} s, first step at {r['first_step_s']:.1f} s, "
                        f"training {r['train_time_s']:.1f} s, finishing {r['finish_s']:.1f} s" for r in dla_rows]]
        lines.append("")
    if "startup" in result:
        lines += ["Start-up: seconds from process start to the end of the first optimiser step (median of launches):", "",
                  "| system | first step (s) | launches (s) |", "|---|---:|---|"]
        lines += [f"| {r['system']} | {r['first_step_s']:.1f} | {', '.join(f'{x:.1f}' for x in r['runs_s'])} |"
                  for r in result["startup"]]
        lines.append("")
    nano_points = [p for k, r in result["runs"].items() if r["system"] == "nanoGPT" for p in r["points"]]
    dla_points = [p for k, r in result["runs"].items() if r["system"] == "dla" and k in DLA_RECIPES for p in r["points"]]
    if nano_points and dla_points:
        lines += ["Best validation loss reached by each wall-clock budget (from process start; lower is better):", "",
                  "| budget (s) | nanoGPT baby | dla CPU recipe | dla lower? |", "|---:|---:|---:|---|"]
        result["budgets"] = []
        for b in BUDGETS:
            n, d = envelope(nano_points, b), envelope(dla_points, b)
            better = n is not None and d is not None and d < n
            result["budgets"].append({"budget_s": b, "nanogpt": n, "dla": d, "dla_lower": better})
            fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
            lines.append(f"| {b} | {fmt(n)} | {fmt(d)} | {'yes' if better else 'no'} |")
        lines.append("")
    (out / "results.json").write_text(json.dumps(result, indent=1))
    (out / "results.md").write_text("\n".join(lines))
    written = ["results.md", "results.json"]
    if any(run["points"] for run in result["runs"].values()):
        plot(result, out / "val_loss_vs_time.png")
        written.append("val_loss_vs_time.png")
    print("\n".join(lines))
    print(f"wrote {', '.join(str(out / name) for name in written)}")
    return 0


def plot(result: dict, path: Path) -> None:
    from dla.report.plots import plt, save_figure

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, run in result["runs"].items():
        pts = run["points"]
        if pts:
            style = "--" if run["system"] == "nanoGPT" else "-"
            ax.plot([p["wall_s"] for p in pts], [p["val_loss"] for p in pts], style, marker=".", label=label)
    ax.set(xlabel="wall time from process start (s)", ylabel="validation loss (nats/char)",
           title="Inferno char-level, 90/10 split, this CPU")
    ax.set_ylim(top=2.4)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    save_figure(fig, path)


if __name__ == "__main__":
    raise SystemExit(main())
