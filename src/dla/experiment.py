"""Run an experiment config end to end: data, task, model, optimiser, `fit`, test metrics, summary, plots.

Image experiments (Lab 1, 3) and language-model experiments (Lab 2.1) share this runner and the
loop; what differs lives in the `Task` (`dla.train.tasks`). Also the pieces later steps share:
building the accelerator and loading a run's model for `eval`, `predict`, `generate` and analysis.
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
from dla.config import ExperimentConfig, TextDataConfig, TrainConfig, to_dict
from dla.data.text import TextData, build_text_data, load_corpus, load_tokenizer
from dla.data.vision import ImageData, get_spec, load_image_data
from dla.errors import ConfigError
from dla.models import MODELS, build_model, count_parameters
from dla.report.plots import plot_run_curves
from dla.report.tables import markdown_table, run_columns
from dla.rundir import RunDir
from dla.track import Tracker, check_tracker, make_tracker
from dla.train.callbacks import Callback, EarlyStopping
from dla.train.checkpoint import load_state, load_weights
from dla.train.loop import FitState, evaluate, fit, set_rng_state
from dla.train.optim import build_optimizer, build_scheduler
from dla.train.tasks import ImageTask, LMTask, Task


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


def can_compile(device: torch.device, verbose: bool = True) -> bool:
    """torch.compile on the CPU needs a C++ compiler; without one, train eagerly instead of failing later."""
    import shutil

    if device.type == "cpu" and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        if verbose:
            print("note: train.compile=true needs a C++ compiler on the CPU (none found); training without compile")
        return False
    return True


def class_names(cfg: ExperimentConfig) -> tuple[str, ...]:
    """The names of the classes a run's model predicts, in output order."""
    names = get_spec(cfg.data.name).classes
    return tuple(names[i] for i in cfg.data.classes) if cfg.data.classes else names


def is_text(cfg: ExperimentConfig) -> bool:
    return isinstance(cfg.data, TextDataConfig)


def model_for(cfg: ExperimentConfig) -> torch.nn.Module:
    if is_text(cfg):  # vocab_size and block_size were set from the tokenizer and data.block_size
        return MODELS[cfg.model.name].build(cfg.model, (cfg.model.block_size,), cfg.model.vocab_size)
    spec = get_spec(cfg.data.name)
    return build_model(cfg.model, spec.shape, len(class_names(cfg)), spec.mean, spec.std)


def load_run_model(run: RunDir, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, ExperimentConfig]:
    """The model of a run with its best weights, in eval mode."""
    cfg = run.load_config()
    model = model_for(cfg)
    load_weights(model, run.best_weights)
    return model.to(device).eval(), cfg


def load_data(cfg: ExperimentConfig, data_root: Path, tokenizer=None) -> ImageData | TextData:
    d = cfg.data
    if is_text(cfg):
        text, source = load_corpus(d.name, data_root, d.path, d.download)
        return build_text_data(text, source, d.splits, d.tokenizer, d.vocab_size, d.min_frequency, tok=tokenizer)
    return load_image_data(
        d.name, data_root, d.val_size, d.split_seed, d.train_subset, d.test_subset, d.download, d.classes
    )


def make_task(cfg: ExperimentConfig, data: ImageData | TextData) -> Task:
    """The task for the data, after checking the config suits it."""
    if isinstance(data, TextData):
        if cfg.model.name != "gpt":
            raise ConfigError(f"data.name={cfg.data.name} is text: it needs model.name=gpt, not {cfg.model.name}")
        if cfg.train.max_steps is None:
            raise ConfigError("language models train for a number of steps: set train.max_steps (e.g. 5000)")
        if cfg.train.monitor != "val_loss":
            raise ConfigError("language models have no accuracy: set train.monitor=val_loss")
        cfg.model.vocab_size = data.tokenizer.vocab_size
        cfg.model.block_size = cfg.data.block_size
        return LMTask(data, cfg.data.block_size, cfg.seed)
    if cfg.train.batch_size > len(data.train):
        raise ConfigError(f"train.batch_size={cfg.train.batch_size} exceeds the {len(data.train)} training images")
    return ImageTask(data, cfg.data.augment)


def describe_data(data: ImageData | TextData) -> str:
    if isinstance(data, TextData):
        return data.describe()
    return f"{data.source}: {len(data.train)} train / {len(data.val)} val / {len(data.test)} test"


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
    tokenizer = load_tokenizer(resume.tokenizer) if resume is not None and is_text(cfg) else None
    data = load_data(cfg, data_root, tokenizer)
    task = make_task(cfg, data)
    raw_model = model_for(cfg).to(accelerator.device)
    if cfg.train.channels_last:
        raw_model = raw_model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(raw_model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.sched, task.total_steps(cfg.train))
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
        if main and isinstance(data, TextData):
            data.tokenizer.save(run.tokenizer)
    accelerator.wait_for_everyone()

    model = torch.compile(raw_model) if cfg.train.compile and can_compile(accelerator.device, main) else raw_model
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
            f"run {run.path}  |  {describe_data(data)}"
            f"  |  {cfg.model.name} {params:,} params  |  {accelerator.device} x{accelerator.num_processes}"
            f" {cfg.train.precision}"
        )
    status = "running"
    try:
        state = fit(
            model, optimizer, scheduler, task, cfg.train, accelerator, run, tracker, generator, state, early,
            raw_model, callbacks,
        )
        status = "stopped early" if early.should_stop else "completed"
        test = task.test(raw_model, accelerator, cfg.train)
        if main and isinstance(data, TextData):
            write_sample(raw_model, data, cfg, run, tracker, state.step)
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
                summary.update({f"test_{k}": v for k, v in test.items()})
                if isinstance(data, TextData) and data.test_is_val:
                    summary["test_split"] = "val (two-way split)"
            else:
                summary["resume_with"] = f"dla train --resume {run.path}"
            run.write_summary(summary)
            if state.history:
                plot_run_curves(state.history, run.plots / "curves.png", title=f"{cfg.name} / {run.name}")
    if main:
        print(f"best {task.unit} {early.best_epoch} ({early.monitor} {early.best:.4f}); results in {run.path}\n")
        summary = run.read_summary()
        print(markdown_table([{**summary, "name": f"{cfg.name}/{run.name}"}], run_columns([summary])), end="")
    return run


def write_sample(model: torch.nn.Module, data: TextData, cfg: ExperimentConfig, run: RunDir, tracker: Tracker, step: int) -> None:
    """A 500-character sample from the best weights, to sample.txt and the tracker."""
    from dla.generate_run import default_prompt, sample_text

    prompt = default_prompt(cfg)
    text = sample_text(model, data.tokenizer, prompt, chars=500, seed=cfg.seed)
    run.sample.write_text(text)
    tracker.text("sample", text, step)
    print(f"\nsample ({run.sample}):\n{text}\n")


def run_summary(
    cfg: ExperimentConfig,
    run: RunDir,
    status: str,
    data: ImageData | TextData,
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
        "unit": "epoch" if isinstance(data, ImageData) else "round",
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
        summary["best_step"] = best["step"]
        summary.update({f"best_{k}": v for k, v in best.items() if k.startswith("val_")})
    return summary
