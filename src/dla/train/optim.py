"""Optimisers and learning-rate schedules from the config."""

from __future__ import annotations

import math

import torch
from torch import nn

from dla.config import OptimConfig, SchedConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices and convolution kernels only: biases, norm gains (fewer than 2
    dimensions) and embedding tables (a tied LM head included) are not decayed, as in nanoGPT and
    the Hugging Face recipes."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or id(p) in embeddings else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: SchedConfig, total_steps: int):
    """A per-step schedule: one-cycle, linear warm-up then cosine or linear decay, or constant."""
    if cfg.name == "onecycle":
        base = [g["lr"] for g in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=base, total_steps=max(total_steps, 2), pct_start=max(cfg.warmup_frac, 1e-3)
        )
    warmup = int(cfg.warmup_frac * total_steps) if cfg.name in ("cosine", "linear") else 0

    def factor(step: int) -> float:
        if cfg.name == "none":
            return 1.0
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 1.0 - progress if cfg.name == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
