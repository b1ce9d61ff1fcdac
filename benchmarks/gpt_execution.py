"""How the Lab 2.1 GPT should execute on this machine: bf16 or fp32, compiled or eager, and the batch
size of the final scoring, each case in a fresh process with an empty inductor cache.

    python benchmarks/gpt_execution.py [--sizes baby,cpu] [--steps 60]

Training step (median ms of the steps after the first 10, AdamW fused, no data loading) and the
first step's seconds (compilation included) for: eager fp32, eager bf16, the blocks compiled
(`GPT.compile_blocks`, what dla does) and the whole model compiled, at nanoGPT's baby size
(width 128, block 64, batch 12) and the `lab2-gpt-char` recipe (width 192, block 128, batch 16).
Then the last-position scoring's microseconds per token at 16 to 1,024 windows per forward pass.
The ratios against eager fp32 are what `train.precision=auto` and `train.compile=auto` rest on
(dla.device.resolve_execution). Run it alone on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SIZES = {"baby": (128, 64, 12), "cpu": (192, 128, 16)}
CASES = [("eager", "fp32"), ("eager", "bf16"), ("blocks", "fp32"), ("whole", "fp32")]

STEP = r'''
import json, sys, time, torch, torch.nn.functional as F
from dla.models.gpt import GPT, GPTConfig
mode, precision, emb, block, batch, steps = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:7])
torch.manual_seed(0)
model = GPT(GPTConfig(vocab_size=80, block_size=block, n_layer=4, n_head=4, n_embd=emb))
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
start = time.perf_counter()
if mode == "blocks":
    model.compile_blocks()
run = torch.compile(model) if mode == "whole" else model
x, y = torch.randint(0, 80, (batch, block)), torch.randint(0, 80, (batch, block))
times = []
for i in range(steps):
    t = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        logits = run(x)
    loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    times.append(time.perf_counter() - t)
    if i == 0:
        first = time.perf_counter() - start
print(json.dumps({"first_step_s": first, "ms": 1000 * sorted(times[10:])[len(times[10:]) // 2]}))
'''

SCORING = r'''
import json, time, torch
from dla.models.gpt import GPT, GPTConfig
torch.manual_seed(0)
model = GPT(GPTConfig(vocab_size=80, block_size=128, n_layer=4, n_head=4, n_embd=192)).eval()
ids, n, out = torch.randint(0, 80, (20000,)), 2048, {}
for batch in (16, 64, 256, 1024):
    with torch.inference_mode():
        t = time.perf_counter()
        for i in range(0, n, batch):
            s = torch.arange(i, i + batch)
            model(ids[s[:, None] + torch.arange(128)], last_only=True)
        out[batch] = 1e6 * (time.perf_counter() - t) / (n * 128)
print(json.dumps(out))
'''


def python(code: str, args: list[str], cache: Path) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="baby,cpu", help=f"comma-separated, of {', '.join(SIZES)}")
    parser.add_argument("--steps", type=int, default=60, help="training steps per case (> 10)")
    args = parser.parse_args()
    sizes = [s for s in args.sizes.split(",") if s]
    if any(s not in SIZES for s in sizes) or args.steps <= 10:
        parser.error(f"--sizes: of {', '.join(SIZES)}; --steps: more than 10")
    sys.path.insert(0, str(REPO / "src"))
    from dla.device import cpu_description

    lines = [f"CPU: {cpu_description()}", "", "| size | execution | first step (s) | ms/step (median) | vs eager fp32 |",
             "|---|---|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            base = None
            for i, (mode, precision) in enumerate(CASES):
                r = python(STEP, [mode, precision, *map(str, SIZES[size]), str(args.steps)], Path(tmp) / f"{size}-{i}")
                base = base or r["ms"]
                lines.append(f"| {size} | {mode} {precision} | {r['first_step_s']:.1f} | {r['ms']:.1f} | {base / r['ms']:.2f}x |")
                print(lines[-1], flush=True)
        scoring = python(SCORING, [], Path(tmp) / "scoring")
    lines += ["", "Last-position scoring (width 192, block 128), microseconds per token by windows per forward pass:", "",
              "| windows per pass | us/token |", "|---:|---:|"]
    lines += [f"| {b} | {us:.1f} |" for b, us in scoring.items()]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
