"""Plain and residual CNNs of any depth (Lab 1.2), one parameterised family.

Layout, after the original lab's network:

    stem      conv3x3 (no padding), in_channels -> w
    4 stages  of `blocks` blocks each, widths w, 2w, 4w, 8w
    block     conv3x3 (c -> c), BN, ReLU, conv3x3 (c -> c'), BN, ReLU  [+ shortcut, then ReLU]
              the last block of a stage doubles the width and halves the resolution (max-pool 3/2/1);
              the last block of the network instead ends in an adaptive max-pool to 2x2
    shortcut  identity, or a strided 1x1 conv + BN where shapes change (residual nets only)
    head      "original": FC 32w -> 16w -> 16w -> classes (2048-1024-1024 at w=64)
              "gap": global average pool, then one linear layer. Its last block does not max-pool
              to 2x2: the average runs over the whole last feature map (as in ResNet), which is
              what makes its class activation maps (dla.analysis.cam) exact and not 2x2

Depth rule: `depth` counts conv layers on the main path, stem included: 8 * blocks + 1. A depth
that is not of that form rounds up, blocks = ceil((depth - 1) / 8), so depth 9, 17 and 48 give
1, 2 and 6 blocks per stage (the original calls its 6-block net "depth 48"; it has 49 convs).
`width` 64 reproduces the original; 16 or 8 is for CPUs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from dla.errors import ConfigError
from dla.models.registry import register_model

STAGES = 4


def blocks_for_depth(depth: int) -> int:
    """Blocks per stage for a nominal depth: ceil((depth - 1) / 8), at least 1."""
    return max(1, math.ceil((depth - 1) / (2 * STAGES)))


@dataclass
class CNNConfig:
    name: str = "cnn"
    depth: int = 9
    residual: bool = False
    width: int = 64  # channels of the first stage; stages use w, 2w, 4w, 8w
    head: Literal["original", "gap"] = "original"
    fc_width: int | None = None  # hidden width of the original head; default 16 * width (1024 at 64)

    def validate(self) -> None:
        if self.depth < 9:
            raise ConfigError(f"model.depth: must be >= 9 (stem + 4 stages of one 2-conv block), got {self.depth}")
        if self.width <= 0 or (self.fc_width is not None and self.fc_width <= 0):
            raise ConfigError("model.width and model.fc_width must be > 0")


class Block(nn.Module):
    """conv3x3 -> BN-ReLU-conv3x3-BN-ReLU -> optional pool; with a shortcut around it when residual."""

    def __init__(self, c_in: int, c_out: int, residual: bool, pool: Literal["none", "max", "final"]):
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(c_in, c_in, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_in),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        ]
        if pool == "max":
            layers.append(nn.MaxPool2d(3, stride=2, padding=1))
        elif pool == "final":
            layers.append(nn.AdaptiveMaxPool2d(2))
        self.body = nn.Sequential(*layers)
        # As in the original, the network's final block (which pools to 2x2) has no shortcut.
        self.residual = residual and pool != "final"
        self.shortcut: nn.Module = nn.Identity()
        if self.residual and (c_in != c_out or pool == "max"):
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=2, bias=False), nn.BatchNorm2d(c_out))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        if not self.residual:
            return out
        return self.relu(out + self.shortcut(x))


class CNN(nn.Module):
    def __init__(self, cfg: CNNConfig, in_channels: int, num_classes: int):
        super().__init__()
        w = cfg.width
        widths = [w * 2**i for i in range(STAGES)]
        blocks = blocks_for_depth(cfg.depth)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, w, 3)]
        for s, c in enumerate(widths):
            for b in range(blocks):
                last_in_stage = b == blocks - 1
                final = last_in_stage and s == STAGES - 1
                c_out = c if final or not last_in_stage else 2 * c
                pool = ("final" if cfg.head == "original" else "none") if final else ("max" if last_in_stage else "none")
                layers.append(Block(c, c_out, cfg.residual, pool))
        self.features = nn.Sequential(*layers)
        c_last = widths[-1]
        if cfg.head == "original":
            hidden = cfg.fc_width or 16 * w
            self.head = nn.Sequential(
                nn.Flatten(),  # flatten, not view: the features may be channels_last
                nn.Linear(c_last * 4, hidden),
                nn.ReLU(inplace=True),
                nn.Linear(hidden, hidden),
                nn.ReLU(inplace=True),
                nn.Linear(hidden, num_classes),
            )
        else:
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register_model("cnn", CNNConfig)
def build_cnn(cfg: CNNConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return CNN(cfg, input_shape[0], num_classes)


def original_cnn(depth: int, residual: bool, num_classes: int = 10, in_channels: int = 3) -> CNN:
    """The original lab's network at full width (64) with its 2048-1024-1024 head."""
    return CNN(CNNConfig(depth=depth, residual=residual, width=64, head="original"), in_channels, num_classes)
