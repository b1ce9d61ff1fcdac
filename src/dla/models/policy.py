"""Lab 4's networks: an agent is a policy (action logits, or Q-values for DQN) and, where the algorithm
needs one, a value network v(s) of the same architecture (REINFORCE's baseline, PPO's critic).

`policy-mlp` is for vector observations (CartPole, LunarLander); `policy-cnn` is the Nature-DQN
convolutional trunk for stacked grey frames (CarRacing). The networks take float observations as the
environment gives them (frames: uint8, scaled to [0, 1] inside the net).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from dla.errors import ConfigError
from dla.models.registry import register_model

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


@dataclass
class PolicyMLPConfig:
    name: str = "policy-mlp"
    hidden: list[int] = field(default_factory=lambda: [64, 64])
    activation: str = "tanh"  # tanh or relu
    critic: bool = False  # a value network beside the policy; set by the run's algorithm, not by hand
    ortho_init: bool = True  # orthogonal init (gain sqrt(2); policy head 0.01, value head 1), as SB3 and CleanRL

    def validate(self) -> None:
        if not self.hidden or min(self.hidden) <= 0:
            raise ConfigError(f"model.hidden: positive widths of at least one hidden layer, got {self.hidden}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"model.activation: {self.activation!r}; choose one of {', '.join(ACTIVATIONS)}")


@dataclass
class PolicyCNNConfig:
    name: str = "policy-cnn"
    hidden: int = 512  # the fully-connected layer after the convolutions
    critic: bool = False
    ortho_init: bool = True

    def validate(self) -> None:
        if self.hidden <= 0:
            raise ConfigError(f"model.hidden: must be > 0, got {self.hidden}")


def _init(layer: nn.Module, gain: float) -> nn.Module:
    if isinstance(layer, (nn.Linear, nn.Conv2d)):
        nn.init.orthogonal_(layer.weight, gain)
        nn.init.zeros_(layer.bias)
    return layer


def mlp(width: int, hidden: list[int], out: int, activation: str, ortho: bool, out_gain: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(width, h), ACTIVATIONS[activation]()]
        width = h
    layers.append(nn.Linear(width, out))
    if ortho:
        for layer in layers[:-1]:
            _init(layer, math.sqrt(2))
        _init(layers[-1], out_gain)
    return nn.Sequential(*layers)


class Agent(nn.Module):
    """`forward(obs)`: action logits (or Q-values); `value(obs)`: v(s) when the agent has a critic."""

    def __init__(self, actor: nn.Module, critic: nn.Module | None):
        super().__init__()
        self.actor = actor
        self.critic = critic

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.actor(obs)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        if self.critic is None:
            raise RuntimeError("this agent has no value network")
        return self.critic(obs).squeeze(-1)


@register_model("policy-mlp", PolicyMLPConfig)
def build_policy_mlp(cfg: PolicyMLPConfig, obs_shape: tuple[int, ...], n_actions: int) -> nn.Module:
    if len(obs_shape) != 1:
        raise ConfigError(f"model.name=policy-mlp takes vector observations; this env's are {obs_shape} "
                          f"(use model.name=policy-cnn for frames)")
    width = obs_shape[0]
    actor = mlp(width, cfg.hidden, n_actions, cfg.activation, cfg.ortho_init, 0.01)
    critic = mlp(width, cfg.hidden, 1, cfg.activation, cfg.ortho_init, 1.0) if cfg.critic else None
    return Agent(actor, critic)


class NatureCNN(nn.Sequential):
    """Mnih et al. (2015): three convolutions and a linear layer over stacked frames (uint8, scaled here)."""

    def __init__(self, frames: int, size: int, hidden: int, out: int, ortho: bool, out_gain: float):
        convs = [nn.Conv2d(frames, 32, 8, 4), nn.ReLU(), nn.Conv2d(32, 64, 4, 2), nn.ReLU(),
                 nn.Conv2d(64, 64, 3, 1), nn.ReLU(), nn.Flatten()]
        with torch.no_grad():
            flat = nn.Sequential(*convs)(torch.zeros(1, frames, size, size)).shape[1]
        layers = [*convs, nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, out)]
        if ortho:
            for layer in layers[:-1]:
                _init(layer, math.sqrt(2))
            _init(layers[-1], out_gain)
        super().__init__(*layers)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return super().forward(obs.float() / 255.0)


@register_model("policy-cnn", PolicyCNNConfig)
def build_policy_cnn(cfg: PolicyCNNConfig, obs_shape: tuple[int, ...], n_actions: int) -> nn.Module:
    if len(obs_shape) != 3 or obs_shape[1] != obs_shape[2]:
        raise ConfigError(f"model.name=policy-cnn takes stacked square frames; this env's observations are {obs_shape}")
    frames, size = obs_shape[0], obs_shape[1]
    if size < 36:
        raise ConfigError(f"model.name=policy-cnn needs frames of at least 36 px (data.frame_size), got {size}")
    actor = NatureCNN(frames, size, cfg.hidden, n_actions, cfg.ortho_init, 0.01)
    critic = NatureCNN(frames, size, cfg.hidden, 1, cfg.ortho_init, 1.0) if cfg.critic else None
    return Agent(actor, critic)
