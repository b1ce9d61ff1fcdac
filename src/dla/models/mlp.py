"""Multilayer perceptron for Lab 1.1: flatten, then `hidden` Linear-ReLU(-Dropout) layers, then a head."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import nn

from dla.errors import ConfigError
from dla.models.registry import register_model

@dataclass
class MLPConfig:
    name: str = "mlp"
    hidden: list[int] = field(default_factory=lambda: [512, 512])  # widths of the hidden layers
    dropout: float = 0.2
    batchnorm: bool = False

    def validate(self) -> None:
        if not self.hidden:
            raise ConfigError("model.hidden: needs at least one hidden layer width, e.g. [512,512]")
        for width in self.hidden:
            if width <= 0:
                raise ConfigError(f"model.hidden: widths must be > 0, got {self.hidden}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout: must be in [0, 1), got {self.dropout}")

@register_model("mlp", MLPConfig)
def build_mlp(cfg: MLPConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for hidden in cfg.hidden:
        layers.append(nn.Linear(width, hidden))
        if cfg.batchnorm:
            layers.append(nn.BatchNorm1d(hidden))
        layers.append(nn.ReLU(inplace=True))
        if cfg.dropout > 0:
            layers.append(nn.Dropout(cfg.dropout))
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)

