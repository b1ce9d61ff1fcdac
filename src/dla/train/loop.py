"""`fit`: one plain training loop on `accelerate` for every lab.

`accelerate` supplies device placement, DDP under torchrun and cross-process reductions; what is
trained on comes from a `Task` (`dla.train.tasks`): image epochs or language-model step rounds.
Each round ends with a validation pass, a metrics record, the best weights (safetensors) and a
resumable state, both written atomically.

An optimiser step calls torch directly (`loss.backward()`, `clip_grad_norm_`, the optimiser's own
`step`) wherever `accelerate`'s wrappers would add nothing, i.e. no gradient scaler, no gradient
accumulation and plain or DDP processes (how `dla.device.make_accelerator` makes every accelerator):
those wrappers cost about 0.1 ms of Python per step, which is a third of a small agent's update.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import nn
from tqdm.auto import tqdm

from dla import STARTED
from dla.config import TrainConfig
from dla.errors import TrainingDiverged
from dla.rundir import RunDir
from dla.track import Tracker
from dla.train.callbacks import Callback, EarlyStopping
from dla.train.checkpoint import load_weights, save_state, save_weights
from dla.train.tasks import Task


@dataclass
class FitState:
    """Everything besides model and optimiser that a resumed run needs to continue identically."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser steps taken
    elapsed_s: float = 0.0  # training wall time so far, across resumes
    first_step_s: float | None = None  # seconds from `origin` to the end of the first step (not when resumed)
    origin: float = field(default_factory=lambda: STARTED, repr=False)  # perf_counter() the start-up counts from
    history: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str | None = None  # why the task ended the run before its last round (e.g. "solved")


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
    task: Task,
    cfg: TrainConfig,
    accelerator: Accelerator,
    run: RunDir | None,
    tracker: Tracker,
    generator: torch.Generator,
    state: FitState,
    early: EarlyStopping,
    raw_model: nn.Module,
    callbacks: Sequence[Callback] = (),
) -> FitState:
    """Train for up to `task.rounds(cfg)` rounds from `state`, validating, checkpointing and early-stopping.

    `model` is what `accelerator.prepare` returned (DDP-wrapped under torchrun); `raw_model` is the
    plain module whose weights are saved. The best weights are loaded back into `raw_model` at the end.
    """
    main = accelerator.is_main_process
    unit = task.unit

    def on_step(step: int) -> None:
        for cb in callbacks:
            cb.on_step_end(step, raw_model)

    for cb in callbacks:
        cb.on_fit_start(run, tracker, raw_model, state.step)
    task.attach(model)
    stop = task.stop_reason(state.history[-1]) if state.history else None  # a resumed run that had reached its goal
    try:
        while state.epoch < task.rounds(cfg) and not early.should_stop and stop is None:
            epoch = state.epoch + 1
            started = time.perf_counter()
            sums = train_round(model, optimizer, scheduler, task, cfg, accelerator, generator, state, epoch, on_step, run)
            steps_time = time.perf_counter() - started
            train = task.train_metrics(sums, model, accelerator, cfg)
            val = task.evaluate(model, "val", accelerator, cfg)
            epoch_time = time.perf_counter() - started
            state.elapsed_s += epoch_time
            record = {
                "epoch": epoch,
                "step": state.step,
                **{f"train_{k}": v for k, v in train.items()},
                **{f"val_{k}": v for k, v in val.items()},
                "lr": optimizer.param_groups[0]["lr"],
                "epoch_time_s": round(epoch_time, 3),
                "steps_time_s": round(steps_time, 3),  # the optimiser steps alone, without evaluation
                "elapsed_s": round(state.elapsed_s, 3),
            }
            for cb in callbacks:
                record.update(cb.epoch_metrics(epoch, raw_model))
            record["best"] = early.update(record[early.monitor], epoch)
            state.epoch = epoch
            state.history.append(record)
            if main and run is not None:
                if record["best"]:
                    save_weights(raw_model, run.best_weights, {"epoch": str(epoch), "step": str(state.step)})
                save_state(training_state(raw_model, optimizer, scheduler, generator, early, state, task), run.last_state)
                run.append_metrics(record)
                tracker.log(record, step=record[task.x_axis] if task.x_axis else state.step if unit == "round" else epoch)
            if main:
                where = f"{unit} {epoch:3d}" if unit == "epoch" else f"step {state.step:6d}"
                metrics = "  ".join(
                    f"{split} " + " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in task.shown(m).items()) for split, m in (("train", train), ("val", val))
                )
                tqdm.write(f"{where}  {metrics}  lr {record['lr']:.2e}  {epoch_time:.1f}s{' *' if record['best'] else ''}")
            for cb in callbacks:
                cb.on_epoch_end(record, raw_model)
            stop = task.stop_reason(record)
    finally:
        for cb in callbacks:
            cb.on_fit_end()
    if early.should_stop and main:
        tqdm.write(f"early stop: no {early.monitor} improvement for {early.patience} {unit}s; best {unit} {early.best_epoch}")
    if stop is not None and main:
        tqdm.write(f"stopped after {unit} {state.epoch}: {stop}")
    state.stop_reason = stop
    accelerator.wait_for_everyone()
    if run is not None and run.best_weights.is_file():
        load_weights(raw_model, run.best_weights)
    return state


def train_round(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    task: Task,
    cfg: TrainConfig,
    accelerator: Accelerator,
    generator: torch.Generator,
    state: FitState,
    epoch: int,
    on_step: Callable[[int], Any],
    run: RunDir | None,
) -> dict[str, torch.Tensor]:
    """One round of optimiser steps (an epoch, or `eval_every` LM steps); returns the summed step stats."""
    steps = task.round_steps(cfg, state.step)
    model.train()
    sums: dict[str, torch.Tensor] = {}  # the task's step stats, summed over the round
    pending: list[torch.Tensor] = []
    quiet = None if accelerator.is_main_process else True  # None: a bar only on a terminal
    desc = (f"epoch {epoch}/{cfg.epochs}" if task.unit == "epoch" else f"steps to {state.step + steps}/{cfg.max_steps}"
            if cfg.max_steps else f"{task.unit} {epoch}/{task.rounds(cfg)}")
    bar = tqdm(total=steps, desc=desc, leave=False, disable=quiet)
    unwrapped = accelerator.unwrap_model(model)  # for input gradients only: no DDP gradient sync
    plain = plain_steps(accelerator)
    opt = getattr(optimizer, "optimizer", optimizer) if plain else optimizer  # the one AcceleratedOptimizer wraps
    params = [p for p in model.parameters() if p.requires_grad]
    keys: list[str] | None = None
    total: torch.Tensor | None = None  # the step stats summed over the round, in the order of `keys`
    for i, batch in enumerate(task.batches(cfg, generator, accelerator, steps)):
        loss, stats = task.step(model, batch, cfg, unwrapped, generator)
        opt.zero_grad(set_to_none=True)
        if plain:
            loss.backward()
        else:
            accelerator.backward(loss)
        if cfg.clip_grad_norm is not None:
            if plain:
                torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad_norm, foreach=True)
            else:
                accelerator.clip_grad_norm_(params, cfg.clip_grad_norm)
        opt.step()
        scheduler.step()
        state.step += 1
        if stats:
            if keys is None:
                keys = list(stats)
            values = torch.stack([stats[k].detach().to(loss.device, torch.float64).reshape(()) for k in keys])
            total = values if total is None else total.add_(values)
        pending.append(loss.detach())
        if state.step == 1:  # start-up: imports, data, model and (with train.compile) compilation
            first_loss = float(loss.detach())  # waits for the step to finish on an accelerator
            state.first_step_s = round(time.perf_counter() - state.origin, 2)
            if accelerator.is_main_process:
                tqdm.write(f"first step done {state.first_step_s:.1f} s after start (loss {first_loss:.4f})")
        on_step(state.step)
        if len(pending) == cfg.log_every or i == steps - 1:
            _check_finite(pending, state.step, epoch, accelerator, run, task.unit)
            bar.update(len(pending))
            bar.set_postfix(loss=f"{float(pending[-1]):.4f}")
            pending = []
    bar.close()
    if keys is not None:
        sums = dict(zip(keys, total))
    if accelerator.num_processes > 1 and sums:
        keys = sorted(sums)
        total = accelerator.reduce(torch.stack([sums[k] for k in keys]), reduction="sum")
        sums = dict(zip(keys, total))
    return sums


def plain_steps(accelerator: Accelerator) -> bool:
    """Whether an optimiser step needs none of `accelerate`'s wrappers (see the module's docstring)."""
    return (accelerator.scaler is None and accelerator.gradient_accumulation_steps == 1
            and accelerator.distributed_type in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU))


def training_state(raw_model, optimizer, scheduler, generator, early: EarlyStopping, state: FitState,
                   task: Task | None = None) -> dict[str, Any]:
    """What `last.pt` holds: enough to continue exactly where this epoch ended (the task's own state too)."""
    return {
        "task": task.state_dict() if task is not None else {},
        "model": raw_model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(generator),
        "early_stopping": early.state_dict(),
        "fit": {"epoch": state.epoch, "step": state.step, "elapsed_s": state.elapsed_s},
        "history": state.history,
    }


def _check_finite(
    pending: list[torch.Tensor], step: int, epoch: int, accelerator: Accelerator, run: RunDir | None, unit: str = "epoch"
):
    losses = torch.stack(pending)
    bad = (~torch.isfinite(losses)).to(torch.float32)
    total_bad = accelerator.reduce(bad.sum(), reduction="sum") if accelerator.num_processes > 1 else bad.sum()
    if float(total_bad) == 0:
        return
    first = int(torch.nonzero(bad).min()) if bad.any() else 0
    bad_step = step - len(pending) + 1 + first
    value = float(losses[first])
    where = f"{run.last_state} ({unit} {epoch - 1})" if run is not None and epoch > 1 else f"none (it failed in {unit} 1)"
    raise TrainingDiverged(
        f"loss became {value} at step {bad_step} ({unit} {epoch}); training stopped. "
        f"Last good checkpoint: {where}. Try a lower optim.lr or set train.clip_grad_norm."
    )
