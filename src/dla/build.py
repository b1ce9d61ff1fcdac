"""From a config to the things it names: its data, its class names and its model, and a run's model.

Training (`dla.experiment`) and every later step (`eval`, `predict`, `generate`, `ood`, `attack`,
CAM) build through here, so a run is always rebuilt exactly as it was trained.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dla.config import (
    IMAGE_CLASSIFIER,
    LANGUAGE_MODEL,
    TEXT_CLASSIFIER,
    ExperimentConfig,
    load_run_config,
    require_run_kind,
    run_kind,
)
from dla.data.text import TextData, build_text_data, load_corpus
from dla.data.vision import ImageData, get_spec, load_image_data
from dla.errors import CheckpointError, ConfigError
from dla.models import MODELS, build_model
from dla.rundir import RunDir
from dla.train.checkpoint import load_weights

COMMAND_KIND = {"dla ood": IMAGE_CLASSIFIER, "dla attack": IMAGE_CLASSIFIER, "dla cam": IMAGE_CLASSIFIER,
                "dla detect": IMAGE_CLASSIFIER, "dla generate": LANGUAGE_MODEL,
                "dla hf eval": TEXT_CLASSIFIER}  # the commands that work on one kind of run only


def class_names(cfg: ExperimentConfig) -> tuple[str, ...]:
    """The names of the classes a run's model predicts, in output order."""
    kind = run_kind(cfg)
    if kind == TEXT_CLASSIFIER:
        from dla.data.topics import TOPIC_CLASSES

        return TOPIC_CLASSES[cfg.data.name]
    if kind == LANGUAGE_MODEL:
        raise ConfigError("a language model has a vocabulary, not classes")
    names = get_spec(cfg.data.name).classes
    names = tuple(names[i] for i in cfg.data.classes) if cfg.data.classes else names
    return (*names, "background") if getattr(cfg.data, "background_class", False) else names


def input_shape(cfg: ExperimentConfig) -> tuple[int, int, int]:
    """The (C, H, W) an image-classifier run was trained on: its data set's, or its canvas's."""
    c, h, w = get_spec(cfg.data.name).shape
    canvas = getattr(cfg.data, "canvas", None)
    return (c, canvas, canvas) if canvas else (c, h, w)


def model_for(cfg: ExperimentConfig) -> torch.nn.Module:
    """The model `cfg` describes, freshly initialised (a pretrained encoder: with its pretrained weights)."""
    kind = run_kind(cfg)
    entry = MODELS[cfg.model.name]
    if kind == LANGUAGE_MODEL:
        if cfg.model.name != "gpt":
            raise ConfigError(f"data.name={cfg.data.name} is text: it needs model.name=gpt, not {cfg.model.name}")
        return entry.build(cfg.model, (cfg.data.block_size,), cfg.model.vocab_size)
    if kind == TEXT_CLASSIFIER:
        if cfg.model.name != "hf-encoder":
            raise ConfigError(f"data.name={cfg.data.name} is topic classification: it needs model.name=hf-encoder "
                              f"(model.pretrained=minilm or a Hub id), not {cfg.model.name}")
        return entry.build(cfg.model, (), len(class_names(cfg)))
    if cfg.model.name in ("gpt", "hf-encoder"):
        raise ConfigError(f"model.name={cfg.model.name} does not classify images; use mlp or cnn")
    spec = get_spec(cfg.data.name)
    return build_model(cfg.model, input_shape(cfg), len(class_names(cfg)), spec.mean, spec.std)


def load_data(cfg: ExperimentConfig, data_root: Path | None, tokenizer: Any = None, quiet: bool = False):
    """The data a config trains on: `ImageData`, `TextData` (a language model) or `TopicInputs` (a text classifier)."""
    d = cfg.data
    kind = run_kind(cfg)
    if kind == LANGUAGE_MODEL:
        text, source = load_corpus(d.name, data_root, d.path, d.download)
        return build_text_data(text, source, d.splits, d.tokenizer, d.vocab_size, d.min_frequency, tok=tokenizer)
    if kind == TEXT_CLASSIFIER:
        from dla.data.topics import prepare_topics

        return prepare_topics(d, cfg.model.pretrained, data_root, tokenizer, quiet=quiet)
    return load_image_data(
        d.name, data_root, d.val_size, d.split_seed, d.train_subset, d.test_subset, d.download, d.classes,
        d.canvas, d.background_class,
    )


def describe_data(data: Any) -> str:
    if isinstance(data, TextData):
        return data.describe()
    if isinstance(data, ImageData):
        return f"{data.source}: {len(data.train)} train / {len(data.val)} val / {len(data.test)} test"
    return data.source


def open_run(path: str | Path, command: str | None = None) -> tuple[RunDir, ExperimentConfig]:
    """A run directory and its config; with `command`, a run of the kind that command works on."""
    run = RunDir.open(path)
    cfg = load_run_config(run)
    if command in COMMAND_KIND:
        require_run_kind(cfg, COMMAND_KIND[command], command, run.path)
    return run, cfg


def load_run_model(run: RunDir, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, ExperimentConfig]:
    """The model of a run with its best weights, in eval mode."""
    cfg = load_run_config(run)
    if not run.best_weights.is_file():
        raise CheckpointError(f"{run.path} has no trained weights ({run.best_weights} is missing): "
                              f"an unfinished run (dla train --resume {run.path}) or one that keeps no model")
    model = model_for(cfg)
    load_weights(model, run.best_weights)
    return model.to(device).eval(), cfg
