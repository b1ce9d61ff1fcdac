"""Run an experiment config end to end: data, task, model, optimiser, `fit`, test metrics, summary, plots.

Every lab trains here: image classifiers (Labs 1, 3), language models (Lab 2.1) and fine-tuned
text classifiers (Lab 2.3) share this runner and the loop; what differs lives in the `Task`
(`dla.train.tasks`). Also `evaluate_run`, the test metrics of a finished run (`dla eval`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed

from dla import STARTED
from dla.build import describe_data, kind_of, load_data, load_run_model, model_for, open_run
from dla.config import ExperimentConfig, to_dict
from dla.device import can_compile, compile_model, make_accelerator, seed_process
from dla.errors import ConfigError
from dla.io import atomic_text
from dla.manifest import PLOTS_TITLE, write_manifest
from dla.models import count_parameters
from dla.report.plots import plot_ood_curves, plot_run_curves
from dla.report.tables import markdown_table, run_columns
from dla.rundir import RunDir
from dla.track import Tracker, check_tracker, make_tracker
from dla.train.callbacks import Callback, EarlyStopping
from dla.train.checkpoint import load_state
from dla.train.loop import FitState, fit, set_rng_state
from dla.train.optim import build_optimizer, build_scheduler
from dla.train.tasks import Task


def make_task(cfg: ExperimentConfig, data: Any) -> Task:
    """The run kind's task for the data, after checking that the config suits it and that `train.monitor`
    names one of the task's validation metrics."""
    kind = kind_of(cfg)
    kind.check(cfg)
    task = kind.make_task(cfg, data)
    valid = [f"val_{m}" for m in task.metrics]
    if cfg.train.monitor not in valid:
        raise ConfigError(f"train.monitor: {cfg.train.monitor} is not a validation metric of a {kind.title} "
                          f"run; valid: {', '.join(valid)}")
    return task


_trained_before = False  # start-up time counts from the process's start for its first run only


def train(
    cfg: ExperimentConfig,
    data_root: Path | None,
    resume: RunDir | None = None,
    callbacks: Sequence[Callback] = (),
    run_path: Path | None = None,
    quiet: bool = False,
) -> RunDir:
    """Train `cfg` into a new run directory (`run_path`, else a fresh one), or continue `resume`."""
    started = time.time()
    global _trained_before
    origin = time.perf_counter() if _trained_before else STARTED  # a command's first run counts its imports
    _trained_before = True
    check_tracker(cfg.track.tracker)
    kind = kind_of(cfg)
    kind.check(cfg)
    accelerator = make_accelerator(cfg.train)
    main = accelerator.is_main_process
    set_seed(cfg.seed)
    data = load_data(cfg, data_root, resume, quiet=quiet or not main)
    task = make_task(cfg, data)
    set_seed(cfg.seed)  # the initial weights depend on the seed alone, whatever loading the data drew
    raw_model = model_for(cfg).to(accelerator.device)
    if cfg.train.channels_last:
        raw_model = raw_model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(raw_model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.sched, task.total_steps(cfg.train))
    # the kind's callbacks are made now: an OOD set that cannot be read stops the command before the run folder exists
    kind_callbacks = kind.callbacks(cfg, data, data_root) if main else []
    generator = torch.Generator().manual_seed(cfg.seed)
    early = EarlyStopping(cfg.train.monitor, cfg.train.patience, cfg.train.min_delta, cfg.train.monitor_mode)
    state = FitState(origin=origin)

    if resume is not None:
        run = resume
        saved = load_state(run.last_state)
        raw_model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        set_rng_state(saved["rng"], generator)
        task.load_state_dict(saved.get("task", {}))
        early.load_state_dict(saved["early_stopping"])
        state = FitState(**saved["fit"], history=list(saved["history"]))
        if main:
            run.rewrite_metrics(state.history)  # drop records of an epoch that was not checkpointed
            print(f"resuming {run.path} after {task.unit} {state.epoch}")
    else:
        path = (run_path or RunDir.new_path(cfg.runs_dir, cfg.name, cfg.run_name)) if main else None
        path = broadcast_object_list([path])[0] if accelerator.num_processes > 1 else path
        run = RunDir.create(path, to_dict(cfg)) if main else RunDir(path)
        if main:
            kind.on_create(run, data)
    accelerator.wait_for_everyone()
    seed_process(cfg.seed, accelerator.process_index, state.step)

    model = compile_model(raw_model) if cfg.train.compile and can_compile(accelerator.device, main) else raw_model
    model, optimizer = accelerator.prepare(model, optimizer)
    tracker = Tracker()
    if main:
        label = f"{cfg.name}-{run.name}"
        tracker = make_tracker(cfg.track.tracker, str(run.path), label, cfg.track.project, to_dict(cfg), state.epoch)
    callbacks = [*callbacks, *kind_callbacks]
    params = count_parameters(raw_model)
    counts = raw_model.parameter_counts() if hasattr(raw_model, "parameter_counts") else {"active": params}
    active = f" ({counts['active']:,} active per token)" if counts["active"] != params else ""  # MoE: k of E experts
    if main:
        print(
            f"run {run.path}  |  {describe_data(cfg, data)}"
            f"  |  {cfg.model.name} {params:,} params{active}  |  {accelerator.device} x{accelerator.num_processes}"
            f" {cfg.train.precision}"
        )
    status = "running"
    phases: dict[str, float] = {"startup_s": round(time.perf_counter() - origin, 2)}  # imports, data, model
    try:
        state = fit(
            model, optimizer, scheduler, task, cfg.train, accelerator, run, tracker, generator, state, early,
            raw_model, callbacks,
        )
        status = "stopped early" if early.should_stop else "completed"
        finishing = time.perf_counter()
        test = task.test(raw_model, accelerator, cfg.train)
        if main:
            kind.finish(raw_model, run, cfg, task, tracker, state.step)
        phases["finish_s"] = round(time.perf_counter() - finishing, 2)  # test scoring, the kind's outputs
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
            if state.first_step_s is not None:  # not on a resume, whose start-up is not a fresh one
                summary.update(phases)
            if status in ("completed", "stopped early"):
                summary.update({f"test_{k}": v for k, v in test.items()})
                summary.update(task.summary(state.history))
                summary.update(kind.summary(cfg, data))
            else:
                summary["resume_with"] = f"dla train --resume {run.path}"
            run.write_summary(summary)
            if state.history:
                plot_run_curves(state.history, run.plots / "curves.png", title=f"{cfg.name} / {run.name}",
                                x="step" if kind.unit == "round" else "epoch")
                ood_curves = plot_ood_curves(state.history, run.plots / "ood_curves.png", title=f"{cfg.name} / "
                                             f"{run.name}: OOD detection during training (solid: energy, dashed: MSP)")
                figures = [{"file": "curves.png", "caption": "training and validation curves", "same_as": "training-curves"}]
                if ood_curves:
                    figures.append({"file": "ood_curves.png", "caption": "OOD detection during training (AUROC, FPR@95)"})
                write_manifest(run.plots, "plots", PLOTS_TITLE, figures)
    if main:
        summary = run.read_summary()
        times = (f"start-up {summary['startup_s']:.1f} s, training {summary['train_time_s']:.1f} s, finishing "
                 f"{summary['finish_s']:.1f} s; " if "finish_s" in summary else "")
        print(f"best {task.unit} {early.best_epoch} ({early.monitor} {early.best:.4f}); {times}results in {run.path}\n")
        print(markdown_table([{**summary, "name": f"{cfg.name}/{run.name}"}], run_columns([summary])), end="")
    return run


def run_summary(
    cfg: ExperimentConfig,
    run: RunDir,
    status: str,
    data: Any,
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
        "kind": cfg.kind,
        "status": status,
        "data": data.source,
        "model": cfg.model.name,
        "unit": kind_of(cfg).unit,
        "params": params,
        "epochs_run": state.epoch,
        "steps": state.step,
        "best_epoch": early.best_epoch,
        "monitor": early.monitor,
        "best_value": early.best,
        "train_time_s": round(state.elapsed_s, 2),
        **({"first_step_s": state.first_step_s} if state.first_step_s is not None else {}),
        **({"stop_reason": state.stop_reason} if state.stop_reason else {}),
        "wall_time_s": round(wall_time_s, 2),
        "torch": torch.__version__,
        "device": str(accelerator.device),
        "processes": accelerator.num_processes,
        "precision": cfg.train.precision,  # as chosen for this machine when the config said auto
        "compile": bool(cfg.train.compile),
    }
    best = next((r for r in state.history if r["epoch"] == early.best_epoch), None)
    if best:
        summary["best_step"] = best["step"]
        summary.update({f"best_{k}": v for k, v in best.items() if k.startswith("val_")})
    return summary


def evaluate_run(path: str | Path, data_root: Path | None, command: str = "dla eval", episodes: int | None = None,
                 seed: int | None = None) -> tuple[dict[str, Any], str]:
    """Test metrics of a run's best weights, recomputed on its test split (an agent: on `episodes` episodes
    seeded from `seed`); written to RUN/eval.json.

    Returns the result and a line to print (for a text classifier, also its confusion matrix).
    """
    run, cfg = open_run(path, command)
    kind = kind_of(cfg)
    kind.eval_options(cfg, episodes, seed)  # before anything loads: a kind without episodes refuses them
    accelerator = make_accelerator(cfg.train)
    model, cfg = load_run_model(run, accelerator.device)
    if cfg.train.channels_last:  # as in training: the same kernels, so the test numbers are the training's own
        model = model.to(memory_format=torch.channels_last)
    kind.eval_options(cfg, episodes, seed)
    kind.prepare_eval(run, cfg)
    data = load_data(cfg, data_root, run, quiet=True)
    task = make_task(cfg, data)
    test = task.test(model, accelerator, cfg.train)
    extra, line = kind.eval_line(run, cfg, data, task, test)
    result = {"run": str(run.path), "kind": cfg.kind, "data": data.source,
              **{f"test_{k}": v for k, v in test.items()}, **extra}
    atomic_text(run.path / "eval.json", json.dumps(result, indent=2) + "\n")
    return result, line
