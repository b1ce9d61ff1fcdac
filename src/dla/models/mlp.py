"""Multilayer perceptron for Lab 1.1: flatten, then `hidden` Linear-ReLU(-Dropout) layers, then a head.

`residual=true` (Lab 1, exercise 1.2 of the newer edition) puts an identity skip around every hidden
layer after the first (which projects the image to the hidden width): h <- h + layer(h), with
layer = Linear-norm-ReLU(-Dropout). The plain net of the same config has the same layers without
the skips, so the two differ only there. `depth` sets the number of hidden layers, each of the
width hidden[0], for a depth study (`dla sweep lab1-mlp-depth`).
"""

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
    residual: bool = False  # identity skips around every hidden layer after the first
    depth: int | None = None  # hidden layers of width hidden[0] (None: the widths of `hidden` as given)

    def widths(self) -> list[int]:
        return [self.hidden[0]] * self.depth if self.depth is not None and self.hidden else list(self.hidden)

    def validate(self) -> None:
        if not self.hidden:
            raise ConfigError("model.hidden: needs at least one hidden layer width, e.g. [512,512]")
        for width in self.hidden:
            if width <= 0:
                raise ConfigError(f"model.hidden: widths must be > 0, got {self.hidden}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout: must be in [0, 1), got {self.dropout}")
        if self.depth is not None and not 1 <= self.depth <= 256:
            raise ConfigError(f"model.depth: hidden layers in [1, 256], got {self.depth}")
        if self.residual and len(set(self.widths())) > 1:
            raise ConfigError(f"model.residual: identity skips need hidden layers of one width, got {self.hidden} "
                              f"(or set model.depth)")


class Residual(nn.Module):
    """h + layer(h): an identity skip around one hidden layer."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return x + self.layer(x)

@register_model("mlp", MLPConfig)
def build_mlp(cfg: MLPConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for i, hidden in enumerate(cfg.widths()):
        layer: list[nn.Module] = [nn.Linear(width, hidden)]
        if cfg.batchnorm:
            layer.append(nn.BatchNorm1d(hidden))
        layer.append(nn.ReLU(inplace=True))
        if cfg.dropout > 0:
            layer.append(nn.Dropout(cfg.dropout))
        layers += [Residual(nn.Sequential(*layer))] if cfg.residual and i else layer
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)

