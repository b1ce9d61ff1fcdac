"""`fit` and `evaluate`: a plain epoch loop on `accelerate` for image classification.

`accelerate` supplies device placement, bf16 autocast, DDP under torchrun and cross-process
reductions; everything else reads top to bottom here. Each epoch ends with a validation pass, a
metrics record, the best weights (safetensors) and a resumable state, both written atomically.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn
from tqdm.auto import tqdm

from dla.config import TrainConfig
from dla.data.batches import batches_per_epoch, eval_batches, train_batches
from dla.data.vision import ImageData, ImageSet
from dla.errors import TrainingDiverged
from dla.rundir import RunDir
from dla.track import Tracker
from dla.train.callbacks import Callback, EarlyStopping
from dla.train.checkpoint import load_weights, save_state, save_weights


@dataclass
class FitState:
    """Everything besides model and optimiser that a resumed run needs to continue identically."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser steps taken
    elapsed_s: float = 0.0  # training wall time so far, across resumes
    history: list[dict[str, Any]] = field(default_factory=list)


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """bf16 autocast when asked for (CPUs with avx512_bf16, GPUs), else a no-op context.

    Done here rather than through `Accelerator(mixed_precision=...)`, whose process-wide state
    cannot change between runs in one process (a sweep, the tests).
    """
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _prepare_input(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    data: ImageSet,
    accelerator: Accelerator,
    batch_size: int = 1024,
    channels_last: bool = False,
    precision: str = "fp32",
) -> dict[str, float]:
    """Mean cross-entropy and accuracy of `model` on `data`, sharded across processes."""
    model.eval()
    sums = torch.zeros(3, device=accelerator.device, dtype=torch.float64)
    x, y = data.x.to(accelerator.device), data.y.to(accelerator.device)
    for xb, yb in eval_batches(x, y, batch_size, accelerator.process_index, accelerator.num_processes):
        with autocast(accelerator.device, precision):
            logits = model(_prepare_input(xb, channels_last))
        logits = logits.float()
        sums[0] += F.cross_entropy(logits, yb, reduction="sum")
        sums[1] += (logits.argmax(1) == yb).sum()
        sums[2] += len(yb)
    if accelerator.num_processes > 1:
        sums = accelerator.reduce(sums, reduction="sum")
    return {"loss": float(sums[0] / sums[2]), "acc": float(sums[1] / sums[2])}


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "data": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    generator.set_state(state["data"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    data: ImageData,
    cfg: TrainConfig,
    accelerator: Accelerator,
    run: RunDir | None,
    tracker: Tracker,
    generator: torch.Generator,
    state: FitState,
    early: EarlyStopping,
    raw_model: nn.Module,
    augment: str = "none",
    callbacks: Sequence[Callback] = (),
) -> FitState:
    """Train for up to `cfg.epochs` epochs from `state`, validating, checkpointing and early-stopping.

    `model` is what `accelerator.prepare` returned (DDP-wrapped under torchrun); `raw_model` is the
    plain module whose weights are saved. The best weights are loaded back into `raw_model` at the end.
    """
    main = accelerator.is_main_process

    def on_step(step: int) -> None:
        for cb in callbacks:
            cb.on_step_end(step, raw_model)

    for cb in callbacks:
        cb.on_fit_start(run, tracker, raw_model, state.step)
    try:
        while state.epoch < cfg.epochs and not early.should_stop:
            epoch = state.epoch + 1
            started = time.perf_counter()
            train = train_epoch(
                model, optimizer, scheduler, data.train, cfg, accelerator, generator, state, epoch, augment,
                on_step, run,
            )
            val = evaluate(model, data.val, accelerator, cfg.eval_batch_size, cfg.channels_last, cfg.precision)
            epoch_time = time.perf_counter() - started
            state.elapsed_s += epoch_time
            record = {
                "epoch": epoch,
                "step": state.step,
                "train_loss": train["loss"],
                "train_acc": train["acc"],
                "val_loss": val["loss"],
                "val_acc": val["acc"],
                "lr": optimizer.param_groups[0]["lr"],
                "epoch_time_s": round(epoch_time, 3),
                "elapsed_s": round(state.elapsed_s, 3),
            }
            record["best"] = early.update(record[early.monitor], epoch)
            state.epoch = epoch
            state.history.append(record)
            if main and run is not None:
                if record["best"]:
                    save_weights(raw_model, run.best_weights, {"epoch": str(epoch)})
                save_state(training_state(raw_model, optimizer, scheduler, generator, early, state), run.last_state)
                run.append_metrics(record)
                tracker.log(record, step=epoch)
            if main:
                tqdm.write(
                    f"epoch {epoch:3d}  train loss {record['train_loss']:.4f} acc {record['train_acc']:.4f}  "
                    f"val loss {record['val_loss']:.4f} acc {record['val_acc']:.4f}  "
                    f"lr {record['lr']:.2e}  {epoch_time:.1f}s{' *' if record['best'] else ''}"
                )
            for cb in callbacks:
                cb.on_epoch_end(record, raw_model)
    finally:
        for cb in callbacks:
            cb.on_fit_end()
    if early.should_stop and main:
        tqdm.write(f"early stop: no {early.monitor} improvement for {early.patience} epochs; best epoch {early.best_epoch}")
    accelerator.wait_for_everyone()
    if run is not None and run.best_weights.is_file():
        load_weights(raw_model, run.best_weights)
    return state


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    data: ImageSet,
    cfg: TrainConfig,
    accelerator: Accelerator,
    generator: torch.Generator,
    state: FitState,
    epoch: int,
    augment: str,
    on_step: Callable[[int], Any],
    run: RunDir | None,
) -> dict[str, float]:
    """One pass over the shuffled training set; returns its mean loss and accuracy (all processes)."""
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    x, y = data.x.to(device), data.y.to(device)
    steps = batches_per_epoch(len(y), cfg.batch_size)
    model.train()
    sums = torch.zeros(3, device=device, dtype=torch.float64)  # loss * n, correct, n
    pending: list[torch.Tensor] = []
    quiet = None if accelerator.is_main_process else True  # None: a bar only on a terminal
    bar = tqdm(total=steps, desc=f"epoch {epoch}/{cfg.epochs}", leave=False, disable=quiet)
    attacked = accelerator.unwrap_model(model)  # input gradients only: no DDP gradient sync
    for i, (xb, yb) in enumerate(train_batches(x, y, cfg.batch_size, generator, rank, world, augment)):
        if cfg.adversarial != "none":
            xb = adversarial_batch(attacked, xb, yb, cfg, generator)
        with autocast(device, cfg.precision):
            logits = model(_prepare_input(xb, cfg.channels_last))
            loss = F.cross_entropy(logits.float(), yb, label_smoothing=cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        if cfg.clip_grad_norm is not None:
            accelerator.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm)
        optimizer.step()
        scheduler.step()
        state.step += 1
        detached = loss.detach()
        # Report plain cross-entropy, comparable with validation, even when training with smoothing.
        reported = F.cross_entropy(logits.detach().float(), yb) if cfg.label_smoothing else detached
        sums[0] += reported * len(yb)
        sums[1] += (logits.detach().argmax(1) == yb).sum()
        sums[2] += len(yb)
        pending.append(detached)
        on_step(state.step)
        if len(pending) == cfg.log_every or i == steps - 1:
            _check_finite(pending, state.step, epoch, accelerator, run)
            bar.update(len(pending))
            bar.set_postfix(loss=f"{float(pending[-1]):.4f}")
            pending = []
    bar.close()
    if world > 1:
        sums = accelerator.reduce(sums, reduction="sum")
    return {"loss": float(sums[0] / sums[2]), "acc": float(sums[1] / sums[2])}


def adversarial_batch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, generator) -> torch.Tensor:
    """Replace a batch by attacks on the current model (fast FGSM with random start, or PGD)."""
    from dla.analysis.adversarial import fgsm_rs, pgd

    with autocast(x.device, cfg.precision):
        if cfg.adversarial == "fgsm_rs":
            return fgsm_rs(model, x, y, cfg.adv_eps, cfg.adv_alpha, generator=generator)
        return pgd(model, x, y, cfg.adv_eps, cfg.adv_alpha, cfg.adv_steps, generator=generator)


def training_state(raw_model, optimizer, scheduler, generator, early: EarlyStopping, state: FitState) -> dict[str, Any]:
    """What `last.pt` holds: enough to continue exactly where this epoch ended."""
    return {
        "model": raw_model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(generator),
        "early_stopping": early.state_dict(),
        "fit": {"epoch": state.epoch, "step": state.step, "elapsed_s": state.elapsed_s},
        "history": state.history,
    }


def _check_finite(pending: list[torch.Tensor], step: int, epoch: int, accelerator: Accelerator, run: RunDir | None):
    losses = torch.stack(pending)
    bad = (~torch.isfinite(losses)).to(torch.float32)
    total_bad = accelerator.reduce(bad.sum(), reduction="sum") if accelerator.num_processes > 1 else bad.sum()
    if float(total_bad) == 0:
        return
    first = int(torch.nonzero(bad).min()) if bad.any() else 0
    bad_step = step - len(pending) + 1 + first
    value = float(losses[first])
    where = f"{run.last_state} (epoch {epoch - 1})" if run is not None and epoch > 1 else "none (it failed in epoch 1)"
    raise TrainingDiverged(
        f"loss became {value} at step {bad_step} (epoch {epoch}); training stopped. "
        f"Last good checkpoint: {where}. Try a lower optim.lr or set train.clip_grad_norm."
    )
