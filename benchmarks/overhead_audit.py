"""Where a user waits for nothing: start-up and end-of-run overhead of dla's commands on this machine.

    python benchmarks/overhead_audit.py [--data-root ../shared/data] [--runs 50]

Each command runs in its own process, timed from launch to exit, and is split into its phases where
the command records them (a training run's summary.json: start-up before the first round, the
first step, the rounds, and finishing after the last round; every output line is timestamped as it
arrives). Cases:
- `python -c "import dla"` and `dla --help`: the floor every command pays;
- `dla train lab2-gpt-char budget=smoke` and `dla train lab1-fcn` on a subset: start-up and finishing
  against the rounds;
- `dla ood` (every detector; the feature detectors fit on training images) and
  `dla attack --method autoattack` on a Lab 1.1 MLP: the time to their first output line is their
  start-up (imports, data, weights);
- `dla report` over --runs copies of a finished run (the report reads every run directory).

Run it alone: on 2 cores anything else running shows up as overhead.
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
sys.path.insert(0, str(REPO / "src"))

from dla.device import cpu_description  # noqa: E402


def timed(cmd: list[str], env: dict, cwd: Path = REPO) -> tuple[float, list[tuple[float, str]]]:
    """Wall seconds from launch to exit, and every output line with the second it arrived."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1)
    lines = [(time.perf_counter() - started, line.rstrip()) for line in proc.stdout]
    proc.wait()
    wall = time.perf_counter() - started
    if proc.returncode:
        print("\n".join(line for _, line in lines[-20:]), file=sys.stderr)
        raise SystemExit(f"{' '.join(cmd[:4])} failed with exit code {proc.returncode}")
    return wall, lines


def train_row(name: str, args: list[str], env: dict, runs: Path, data_root: str) -> tuple[dict, Path]:
    run_name = name.replace(" ", "-")
    wall, _ = timed([sys.executable, "-m", "dla", "--data-root", data_root, "train", *args, "track.tracker=tensorboard",
                     f"runs_dir={runs}", f"run_name={run_name}"], env)
    run = next(runs.glob(f"*/{run_name}"))
    s = json.loads((run / "summary.json").read_text())
    after = wall - s["startup_s"] - s["train_time_s"] - s["finish_s"]  # summary, plots, tables, exit
    return {"command": f"dla train {' '.join(args)}", "wall_s": round(wall, 2), "startup_s": s["startup_s"],
            "first_step_s": s["first_step_s"], "work_s": s["train_time_s"], "finish_s": s["finish_s"],
            "after_s": round(after, 2), "overhead_share": round(1 - s["train_time_s"] / wall, 3)}, run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--runs", type=int, default=50, help="run directories for the report case")
    parser.add_argument("--repeats", type=int, default=3, help="launches of the import and --help cases")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "overhead_audit"))
    args = parser.parse_args()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env["XDG_CACHE_HOME"] = str(work / "cache")  # a cold cache for every case, as on a clean clone
        for label, cmd in (("python -c 'import dla'", [sys.executable, "-c", "import dla"]),
                           ("dla --help", [sys.executable, "-m", "dla", "--help"])):
            walls = [timed(cmd, env)[0] for _ in range(args.repeats)]
            rows.append({"command": label, "wall_s": round(statistics.median(walls), 2)})
            print(f"{label}: {rows[-1]['wall_s']:.2f} s", flush=True)
        root = work / "data"
        timed([sys.executable, "-m", "dla", "--data-root", str(root), "data", "import", "mnist",
               str(Path(args.data_root) / "mnist")], env)
        runs = work / "runs"
        cases = [("gpt smoke", ["lab2-gpt-char", "budget=smoke"], args.data_root),
                 ("mlp", ["lab1-mlp", "train.epochs=1"], str(root)),
                 ("fcn subset", ["lab1-fcn", "train.epochs=1", "data.train_subset=10000"], str(root))]
        made = {}
        for name, train_args, data_root in cases:
            row, made[name] = train_row(name, train_args, env, runs, data_root)
            rows.append(row)
            print(json.dumps(row), flush=True)
        last = made["fcn subset"]
        for label, extra in (("dla ood RUN", ["ood"]), ("dla attack RUN --method autoattack --n 50",
                                                        ["attack", "--method", "autoattack", "--n", "50"])):
            wall, lines = timed([sys.executable, "-m", "dla", "--data-root", str(root), extra[0], str(made["mlp"]),
                                 *extra[1:]], env)
            first = next((t for t, line in lines if line.strip()), wall)
            rows.append({"command": label, "wall_s": round(wall, 2), "startup_s": round(first, 2),
                         "work_s": round(wall - first, 2)})
            print(json.dumps(rows[-1]), flush=True)
        many = work / "many"
        for i in range(args.runs):
            shutil.copytree(last, many / "lab1-fcn" / f"copy-{i:03d}")
        wall, _ = timed([sys.executable, "-m", "dla", "report", str(many), "--out", str(work / "report")], env)
        rows.append({"command": f"dla report on {args.runs} runs", "wall_s": round(wall, 2)})
        print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# dla overhead audit, {time.strftime('%Y-%m-%d')}", "", f"CPU: {cpu_description()}", "",
             "| command | wall (s) | start-up (s) | first step at (s) | rounds (s) | finishing (s) | after (s) | overhead |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]

    def cell(row: dict, key: str, spec: str = ".1f") -> str:
        return f"{row[key]:{spec}}" if key in row else "-"

    for r in rows:
        share = f"{100 * r['overhead_share']:.0f}%" if "overhead_share" in r else "-"
        lines.append(f"| `{r['command']}` | {cell(r, 'wall_s', '.2f')} | {cell(r, 'startup_s')} | {cell(r, 'first_step_s')} | "
                     f"{cell(r, 'work_s')} | {cell(r, 'finish_s')} | {cell(r, 'after_s')} | {share} |")
    (out / "results.json").write_text(json.dumps({"cpu": cpu_description(), "rows": rows}, indent=1))
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
