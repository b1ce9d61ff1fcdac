"""A registry of models by name: each has a config dataclass and a builder (timm-style)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn


@dataclass(frozen=True)
class ModelEntry:
    config_cls: type
    build: Callable[[Any, tuple[int, ...], int], nn.Module]


MODELS: dict[str, ModelEntry] = {}


def register_model(name: str, config_cls: type) -> Callable:
    """Decorator: `@register_model("mlp", MLPConfig)` over `build(cfg, input_shape, num_classes)`."""

    def wrap(build: Callable) -> Callable:
        MODELS[name] = ModelEntry(config_cls, build)
        return build

    return wrap


class Normalize(nn.Module):
    """Per-channel standardisation as the model's first layer, so every model takes images in [0, 1].

    Keeping it inside the model means predict, OOD scoring and adversarial attacks all work in
    pixel space with no separate preprocessing to get wrong.
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def build_model(cfg: Any, input_shape: tuple[int, ...], num_classes: int, mean: tuple, std: tuple) -> nn.Module:
    """Build the registered model named `cfg.name`, preceded by input normalisation."""
    net = MODELS[cfg.name].build(cfg, input_shape, num_classes)
    return Classifier(Normalize(mean, std), net)


class Classifier(nn.Sequential):
    """`normalize` then `net`: the module every image model is wrapped in."""

    def __init__(self, normalize: Normalize, net: nn.Module):
        super().__init__()
        self.normalize = normalize
        self.net = net


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
