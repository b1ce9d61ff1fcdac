"""Optimisers and learning-rate schedules from the config."""

from __future__ import annotations

import math

import torch
from torch import nn

from dla.config import OptimConfig, SchedConfig


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.name == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay
        )
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: SchedConfig, total_steps: int):
    """A per-step schedule: one-cycle, linear-warmup cosine, or constant."""
    if cfg.name == "onecycle":
        base = [g["lr"] for g in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=base, total_steps=max(total_steps, 2), pct_start=max(cfg.warmup_frac, 1e-3)
        )
    warmup = int(cfg.warmup_frac * total_steps) if cfg.name == "cosine" else 0

    def factor(step: int) -> float:
        if cfg.name == "none":
            return 1.0
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
