"""A toy run kind, used only by the tests, that proves a new kind is one file plus a YAML: least-squares
regression of y = x . w + noise (a seeded synthetic set) with an MLP, trained, evaluated and reported by
the one engine with no edit to build, experiment, sweep, report or the command line."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dla.errors import ConfigError
from dla.kind import Column, RunKind, register_kind
from dla.models import MODELS
from dla.train.tasks import Task


@dataclass
class RegressionData:
    name: str = "synthetic"
    n: int = 512  # examples (a quarter each for validation and test)
    features: int = 8
    noise: float = 0.1

    def validate(self) -> None:
        if self.n < 8 or self.features < 1 or self.noise < 0:
            raise ConfigError("data: n >= 8, features >= 1, noise >= 0")


class Synthetic:
    def __init__(self, cfg: RegressionData, seed: int):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(cfg.n, cfg.features, generator=g)
        y = x @ torch.randn(cfg.features, generator=g) + cfg.noise * torch.randn(cfg.n, generator=g)
        q = cfg.n // 4
        self.splits = {"train": (x[2 * q:], y[2 * q:]), "val": (x[:q], y[:q]), "test": (x[q:2 * q], y[q:2 * q])}
        self.source = f"synthetic regression ({cfg.features} features, noise {cfg.noise})"


class RegressionTask(Task):
    metrics = ("loss", "r2")

    def __init__(self, data: Synthetic):
        self.data = data

    def _steps(self, cfg):
        return max(1, len(self.data.splits["train"][0]) // cfg.batch_size)

    def total_steps(self, cfg):
        return self._steps(cfg) * cfg.epochs

    def rounds(self, cfg):
        return cfg.epochs

    def round_steps(self, cfg, done_steps):
        return self._steps(cfg)

    def batches(self, cfg, generator, accelerator, steps):
        x, y = self.data.splits["train"]
        order = torch.randperm(len(x), generator=generator)
        for i in range(steps):
            rows = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            yield x[rows], y[rows]

    def step(self, model, batch, cfg, unwrapped, generator):
        x, y = batch
        loss = F.mse_loss(model(x).squeeze(1), y)
        return loss, {"se": loss.detach() * len(y), "n": torch.tensor(float(len(y)))}

    def train_metrics(self, sums, model, accelerator, cfg):
        return {"loss": float(sums["se"] / sums["n"])}

    @torch.inference_mode()
    def evaluate(self, model, split, accelerator, cfg):
        model.eval()
        x, y = self.data.splits[split]
        loss = float(F.mse_loss(model(x).squeeze(1), y))
        return {"loss": loss, "r2": 1 - loss / float(y.var(unbiased=False))}


@register_kind
class ToyRegression(RunKind):
    name = "toy-regression"
    title = "toy regressor"
    data_config = RegressionData
    models = ("mlp",)
    table_columns = (("run", "name", "str"), ("test MSE", "test_loss", "float"), ("test R2", "test_r2", "float"))
    sweep_columns = table_columns
    report_columns = (Column("test R2", "test_r2", "float", True), Column("test MSE", "test_loss", "float", False))
    fallback = Column("best val R2", "best_val_r2", "float", True)

    def load_data(self, cfg, data_root, run=None, quiet=False):
        return Synthetic(cfg.data, cfg.seed)

    def make_task(self, cfg, data):
        return RegressionTask(data)

    def build_model(self, cfg):
        return MODELS[cfg.model.name].build(cfg.model, (cfg.data.features,), 1)
