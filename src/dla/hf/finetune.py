"""Lab 2.3: fine-tune a pretrained encoder (AutoModelForSequenceClassification) for topic classification.

A small loop of our own rather than `transformers.Trainer`: the run must write the project's run
directory (config.yaml, metrics.jsonl, summary.json, tb/, plots/) and print the same per-epoch lines
as `dla train`, and the loop is short enough that wrapping Trainer's callbacks would be longer. It
has dynamic padding with length-grouped batches, AdamW with linear warm-up and decay, validation
every epoch, early stopping and restores the best weights before the one test evaluation.
"""

from __future__ import annotations

import dataclasses
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from dla.errors import TrainingDiverged
from dla.hf.batching import autocast, train_batches
from dla.hf.classify import (
    MODEL_DIR,
    classifier_logits,
    device_for,
    metrics,
    plot_confusion,
    prepare,
)
from dla.hf.config import FinetuneConfig, save
from dla.hf.hub import load_pretrained
from dla.rundir import RunDir
from dla.track import check_tracker, make_tracker
from dla.train.callbacks import EarlyStopping
from dla.io import atomic_write


def create_run(cfg: FinetuneConfig, suffix: str = "") -> RunDir:
    """A fresh `runs/<name><suffix>/<run>/` with plots/ and the resolved config.yaml."""
    run = RunDir(RunDir.new_path(cfg.runs_dir, cfg.name + suffix, cfg.run_name))
    run.plots.mkdir(parents=True)
    atomic_write(run.config, lambda tmp: save(cfg, tmp))
    return run


def environment(device: torch.device) -> dict[str, Any]:
    import transformers

    return {"device": str(device), "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__}


def load_encoder_classifier(name: str, classes: tuple[str, ...]) -> Any:
    """The pretrained encoder with a new classification head for `classes`."""
    from transformers import AutoModelForSequenceClassification

    return load_pretrained(
        AutoModelForSequenceClassification.from_pretrained, name, "model", num_labels=len(classes),
        id2label=dict(enumerate(classes)), label2id={c: i for i, c in enumerate(classes)},
    )


def make_optimizer(model: torch.nn.Module, cfg: FinetuneConfig, total_steps: int):
    """AdamW (no decay on biases and LayerNorm weights) and a linear warm-up then linear decay to 0."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.train.lr,
    )
    warmup = int(cfg.train.warmup_frac * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def save_model(model: Any, tokenizer: Any, folder: Path) -> None:
    """`save_pretrained` (safetensors) of model and tokenizer into a temporary folder, then swapped in."""
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    old = folder.with_name(f".{folder.name}.old")
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def finetune(cfg: FinetuneConfig, data_root: Path | None = None, quiet: bool = False) -> RunDir:
    """Fine-tune `cfg.model.name` on `cfg.data`; returns the run directory."""
    check_tracker(cfg.track.tracker)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    device = device_for(cfg.train.device)
    prep = prepare(cfg, data_root, quiet=quiet)
    data = prep.data
    torch.manual_seed(cfg.seed)  # the new head's initial weights depend only on the seed
    model = load_encoder_classifier(cfg.model.name, data.classes).to(device)
    train, val = prep.encode("train"), prep.encode("val")
    y_train = torch.from_numpy(data.train.labels)
    steps_per_epoch = -(-len(train.ids) // cfg.train.batch_size)
    total_steps = min(cfg.train.max_steps or 10**12, cfg.train.epochs * steps_per_epoch)
    optimizer, scheduler = make_optimizer(model, cfg, total_steps)
    early = EarlyStopping(cfg.train.monitor, cfg.train.patience)
    params = sum(p.numel() for p in model.parameters())

    run = create_run(cfg)
    tracker = make_tracker(cfg.track.tracker, str(run.path), run.name, cfg.track.project, dataclasses.asdict(cfg))
    say = (lambda *a: None) if quiet else tqdm.write
    say(f"run {run.path}: {cfg.model.name} ({params:,} parameters) on {device}, {steps_per_epoch} steps/epoch, "
        f"up to {cfg.train.epochs} epochs")
    generator = torch.Generator().manual_seed(cfg.seed)
    lengths = train.lengths
    best_state: dict[str, torch.Tensor] | None = None
    step, tokens, samples, train_time = 0, 0, 0, 0.0
    try:
        for epoch in range(1, cfg.train.epochs + 1):
            model.train()
            start = time.perf_counter()
            loss_sum, correct, seen, epoch_tokens = 0.0, 0, 0, 0
            batches = train_batches(lengths, cfg.train.batch_size, generator, cfg.train.group_by_length)
            batches = batches[: total_steps - step]
            bar = tqdm(batches, desc=f"epoch {epoch}", leave=False, disable=True if quiet else None)
            for index in bar:
                batch = train.batch(index, device)
                labels = y_train[index].to(device)
                with autocast(device, cfg.train.precision):
                    logits = model(**batch).logits
                loss = torch.nn.functional.cross_entropy(logits.float(), labels)
                if not torch.isfinite(loss):
                    raise TrainingDiverged(f"the loss became {loss.item()} at step {step + 1} (epoch {epoch}); "
                                           f"lower train.lr (now {cfg.train.lr:g})")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.train.clip_grad_norm:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.clip_grad_norm)
                optimizer.step()
                scheduler.step()
                step += 1
                n = len(index)
                loss_sum += loss.item() * n
                correct += int((logits.argmax(1) == labels).sum())
                seen += n
                epoch_tokens += int(batch["attention_mask"].sum())
                if step % 20 == 0:
                    tracker.log({"train_step_loss": loss.item(), "lr": scheduler.get_last_lr()[0]}, step)
                    bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}")
            epoch_time = time.perf_counter() - start
            train_time += epoch_time
            tokens += epoch_tokens
            samples += seen
            val_m = metrics(data.val.labels, classifier_logits(model, val, cfg.train.eval_batch_size, device,
                                                                cfg.train.precision, "val"))
            record = {"epoch": epoch, "step": step, "train_loss": loss_sum / seen, "train_acc": correct / seen,
                      "val_loss": val_m["loss"], "val_acc": val_m["acc"], "val_f1": val_m["f1"],
                      "lr": scheduler.get_last_lr()[0], "epoch_time_s": epoch_time,
                      "train_tokens_per_s": epoch_tokens / epoch_time}
            record["best"] = early.update(record[cfg.train.monitor], epoch)
            run.append_metrics(record)
            tracker.log(record, epoch)
            if record["best"]:
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                save_model(model, prep.tokenizer, run.path / MODEL_DIR)
            say(f"epoch {epoch}  train loss {record['train_loss']:.4f} acc {record['train_acc']:.4f}  "
                f"val loss {record['val_loss']:.4f} acc {record['val_acc']:.4f} macro-F1 {record['val_f1']:.4f}  "
                f"{epoch_time:.0f}s, {record['train_tokens_per_s']:.0f} tokens/s{' *' if record['best'] else ''}")
            if early.should_stop:
                say(f"early stop: no {cfg.train.monitor} improvement for {early.patience} epoch(s); "
                    f"best epoch {early.best_epoch}")
                break
            if step >= total_steps:
                break
    finally:
        tracker.close()

    assert best_state is not None
    model.load_state_dict(best_state)
    test_logits = classifier_logits(model, prep.encode("test"), cfg.train.eval_batch_size, device, cfg.train.precision,
                                    "test")
    test_m = metrics(data.test.labels, test_logits)
    history = run.read_metrics()
    from dla.report.plots import plot_run_curves

    plot_run_curves(history, run.plots / "curves.png", f"{cfg.name}: {cfg.model.name} on {data.source}")
    plot_confusion(data.test.labels, test_logits.argmax(1), data.classes, run.plots / "confusion.png",
                   f"{cfg.name}: test acc {100 * test_m['acc']:.2f}%, macro-F1 {test_m['f1']:.4f}")
    summary = {
        "kind": "hf-finetune", "experiment": cfg.name, "model": cfg.model.name, "data": data.source,
        "splits": data.describe(), "data_files": data.extra, "classes": list(data.classes),
        "max_length": prep.max_length, "token_lengths": prep.lengths, "params": params,
        "epochs_run": len(history), "steps": step, "best_epoch": early.best_epoch,
        f"best_{cfg.train.monitor}": early.best,
        "test_loss": test_m["loss"], "test_acc": test_m["acc"], "test_f1": test_m["f1"],
        "train_time_s": train_time, "train_tokens": tokens, "train_tokens_per_s": tokens / train_time,
        "train_samples_per_s": samples / train_time, **environment(device),
    }
    run.write_summary(summary)
    say(f"test acc {test_m['acc']:.4f}  macro-F1 {test_m['f1']:.4f}  (best epoch {early.best_epoch}, "
        f"{train_time:.0f}s training, {summary['train_tokens_per_s']:.0f} tokens/s); wrote {run.path}")
    return run
