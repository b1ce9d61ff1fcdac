"""Run an experiment config end to end: data, model, optimiser, `fit`, test metrics, summary, plots.

Also the pieces later steps share: building the accelerator and loading a run's model for
`eval`, `predict` and the analysis commands.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed

from dla.analysis.gradients import GradientStats
from dla.config import ExperimentConfig, TrainConfig, to_dict
from dla.data.vision import ImageData, get_spec, load_image_data
from dla.errors import ConfigError
from dla.models import build_model, count_parameters
from dla.report.plots import plot_run_curves
from dla.report.tables import markdown_table
from dla.rundir import RunDir
from dla.track import Tracker, check_tracker, make_tracker
from dla.train.callbacks import Callback, EarlyStopping
from dla.train.checkpoint import load_state, load_weights
from dla.train.loop import FitState, evaluate, fit, set_rng_state
from dla.train.optim import build_optimizer, build_scheduler


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    """An Accelerator for the configured device and precision (DDP when launched by torchrun)."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is available; use train.device=auto or cpu")
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    # accelerate only sets up gloo DDP under torchrun when told it runs on the CPU.
    on_cpu = cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available())
    accelerator = Accelerator(cpu=on_cpu)
    if cfg.batch_size % accelerator.num_processes:
        raise ConfigError(
            f"train.batch_size={cfg.batch_size} must divide evenly across {accelerator.num_processes} processes"
        )
    return accelerator


def class_names(cfg: ExperimentConfig) -> tuple[str, ...]:
    """The names of the classes a run's model predicts, in output order."""
    names = get_spec(cfg.data.name).classes
    return tuple(names[i] for i in cfg.data.classes) if cfg.data.classes else names


def model_for(cfg: ExperimentConfig) -> torch.nn.Module:
    spec = get_spec(cfg.data.name)
    return build_model(cfg.model, spec.shape, len(class_names(cfg)), spec.mean, spec.std)


def load_run_model(run: RunDir, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, ExperimentConfig]:
    """The model of a run with its best weights, in eval mode."""
    cfg = run.load_config()
    model = model_for(cfg)
    load_weights(model, run.best_weights)
    return model.to(device).eval(), cfg


def load_data(cfg: ExperimentConfig, data_root: Path) -> ImageData:
    d = cfg.data
    return load_image_data(
        d.name, data_root, d.val_size, d.split_seed, d.train_subset, d.test_subset, d.download, d.classes
    )


def train(
    cfg: ExperimentConfig,
    data_root: Path,
    resume: RunDir | None = None,
    callbacks: Sequence[Callback] = (),
    run_path: Path | None = None,
) -> RunDir:
    """Train `cfg` into a new run directory (`run_path`, else a fresh one), or continue `resume`."""
    started = time.time()
    check_tracker(cfg.track.tracker)
    accelerator = make_accelerator(cfg.train)
    main = accelerator.is_main_process
    set_seed(cfg.seed)
    data = load_data(cfg, data_root)
    if cfg.train.batch_size > len(data.train):
        raise ConfigError(f"train.batch_size={cfg.train.batch_size} exceeds the {len(data.train)} training images")
    raw_model = model_for(cfg).to(accelerator.device)
    if cfg.train.channels_last:
        raw_model = raw_model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(raw_model, cfg.optim)
    steps_per_epoch = len(data.train) // cfg.train.batch_size
    scheduler = build_scheduler(optimizer, cfg.sched, steps_per_epoch * cfg.train.epochs)
    generator = torch.Generator().manual_seed(cfg.seed)
    early = EarlyStopping(cfg.train.monitor, cfg.train.patience, cfg.train.min_delta)
    state = FitState()

    if resume is not None:
        run = resume
        saved = load_state(run.last_state)
        raw_model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        set_rng_state(saved["rng"], generator)
        early.load_state_dict(saved["early_stopping"])
        state = FitState(**saved["fit"], history=list(saved["history"]))
        if main:
            run.rewrite_metrics(state.history)  # drop records of an epoch that was not checkpointed
            print(f"resuming {run.path} after epoch {state.epoch}")
    else:
        path = (run_path or RunDir.new_path(cfg.runs_dir, cfg.name, cfg.run_name)) if main else None
        path = broadcast_object_list([path])[0] if accelerator.num_processes > 1 else path
        run = RunDir.create(path, cfg) if main else RunDir(path)
    accelerator.wait_for_everyone()

    model = torch.compile(raw_model) if cfg.train.compile else raw_model
    model, optimizer = accelerator.prepare(model, optimizer)
    tracker = Tracker()
    if main:
        label = f"{cfg.name}-{run.name}"
        tracker = make_tracker(cfg.track.tracker, str(run.path), label, cfg.track.project, to_dict(cfg), state.epoch)
    if main and cfg.train.grad_stats_every:
        callbacks = [*callbacks, GradientStats(cfg.train.grad_stats_every)]
    params = count_parameters(raw_model)
    if main:
        print(
            f"run {run.path}  |  {data.source}: {len(data.train)} train / {len(data.val)} val / {len(data.test)} test"
            f"  |  {cfg.model.name} {params:,} params  |  {accelerator.device} x{accelerator.num_processes}"
            f" {cfg.train.precision}"
        )
    status = "running"
    try:
        state = fit(
            model, optimizer, scheduler, data, cfg.train, accelerator, run, tracker, generator, state, early,
            raw_model, cfg.data.augment, callbacks,
        )
        status = "stopped early" if early.should_stop else "completed"
        test = evaluate(
            raw_model, data.test, accelerator, cfg.train.eval_batch_size, cfg.train.channels_last, cfg.train.precision
        )
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except Exception:
        status = "failed"
        raise
    finally:
        tracker.close()
        if main and status != "running":
            summary = run_summary(cfg, run, status, data, params, state, early, accelerator, time.time() - started)
            if status in ("completed", "stopped early"):
                summary.update(test_loss=test["loss"], test_acc=test["acc"])
            else:
                summary["resume_with"] = f"dla train --resume {run.path}"
            run.write_summary(summary)
            if state.history:
                plot_run_curves(state.history, run.plots / "curves.png", title=f"{cfg.name} / {run.name}")
    if main:
        print(f"best epoch {early.best_epoch} ({early.monitor} {early.best:.4f}); results in {run.path}\n")
        print(markdown_table([{**run.read_summary(), "name": f"{cfg.name}/{run.name}"}]), end="")
    return run


def run_summary(
    cfg: ExperimentConfig,
    run: RunDir,
    status: str,
    data: ImageData,
    params: int,
    state: FitState,
    early: EarlyStopping,
    accelerator: Accelerator,
    wall_time_s: float,
) -> dict:
    """What summary.json records about a run (test metrics are added by the caller)."""
    summary = {
        "experiment": cfg.name,
        "run": run.name,
        "status": status,
        "data": data.source,
        "model": cfg.model.name,
        "params": params,
        "epochs_run": state.epoch,
        "steps": state.step,
        "best_epoch": early.best_epoch,
        "monitor": early.monitor,
        "best_value": early.best,
        "train_time_s": round(state.elapsed_s, 2),
        "wall_time_s": round(wall_time_s, 2),
        "torch": torch.__version__,
        "device": str(accelerator.device),
        "processes": accelerator.num_processes,
        "precision": cfg.train.precision,
    }
    best = next((r for r in state.history if r["epoch"] == early.best_epoch), None)
    if best:
        summary.update(best_val_loss=best["val_loss"], best_val_acc=best["val_acc"])
    return summary
