"""An image embedding net for metric learning (the original's planned "Siamese models" exercise).

The Lab 1.2 CNN family (`dla.models.cnn`) with its global-average-pooling head projecting to
`embed_dim` instead of the classes, and the output L2-normalised: one net embeds every image (the
"Siamese" twins share their weights), and distances between embeddings are what the triplet loss
of `dla.train.metric` shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import nn

from dla.errors import ConfigError
from dla.models.cnn import CNN, CNNConfig
from dla.models.registry import register_model


@dataclass
class EmbedNetConfig:
    name: str = "embed-cnn"
    depth: int = 9
    residual: bool = False
    width: int = 16
    embed_dim: int = 64
    margin: float = 0.2  # the triplet loss's margin (distances between unit vectors lie in [0, 2])

    def validate(self) -> None:
        if not (0 < self.margin <= 2):
            raise ConfigError(f"model.margin: a triplet margin in (0, 2] (unit vectors are at most 2 apart), got {self.margin}")
        if not 1 <= self.embed_dim <= 4096:
            raise ConfigError(f"model.embed_dim: an embedding size in [1, 4096], got {self.embed_dim}")
        CNNConfig(depth=self.depth, residual=self.residual, width=self.width, head="gap").validate()


class EmbedNet(nn.Module):
    def __init__(self, cnn: nn.Module):
        super().__init__()
        self.cnn = cnn

    def forward(self, x):
        return F.normalize(self.cnn(x), dim=1)


@register_model("embed-cnn", EmbedNetConfig)
def build_embed_net(cfg: EmbedNetConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    cnn_cfg = CNNConfig(depth=cfg.depth, residual=cfg.residual, width=cfg.width, head="gap")
    return EmbedNet(CNN(cnn_cfg, input_shape[0], cfg.embed_dim))
