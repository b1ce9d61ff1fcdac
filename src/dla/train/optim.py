"""Optimisers and learning-rate schedules from the config."""

from __future__ import annotations

import math

import torch
from torch import nn

from dla.config import OptimConfig, SchedConfig
from dla.errors import ConfigError


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices and convolution kernels only: biases, norm gains (fewer than 2
    dimensions) and embedding tables (a tied LM head included) are not decayed, as in nanoGPT and
    the Hugging Face recipes."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or id(p) in embeddings else decay).append(p)
    if weight_decay == 0:  # nothing to tell apart: one group (one optimiser kernel call per step, not two)
        return [{"params": decay + no_decay, "weight_decay": 0.0}]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def hidden_matrices(model: nn.Module) -> list[nn.Parameter]:
    """The weights Muon is for: 2-D weights of linear layers inside the network. The output layer
    (the last linear layer, a tied LM head included), embeddings, convolution kernels, biases and
    norm gains are left to AdamW, as in Muon's recipe."""
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    left_out = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    if weights:
        left_out.add(id(weights[-1]))
    hidden = {id(w): w for w in weights if w.requires_grad and id(w) not in left_out}  # a shared weight once
    return list(hidden.values())


class Optimizers(torch.optim.Optimizer):
    """Several optimisers stepped as one (Muon for the hidden matrices, AdamW for the rest): their
    parameter groups are this one's, so a schedule sets every lr, and one state dict checkpoints all."""

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.parts = optimizers
        super().__init__([g for o in optimizers for g in o.param_groups], {})

    def _sync(self) -> None:
        self.param_groups = [g for o in self.parts for g in o.param_groups]

    @torch.no_grad()
    def step(self, closure=None):
        for o in self.parts:
            o.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.parts:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"parts": [o.state_dict() for o in self.parts]}

    def load_state_dict(self, state_dict: dict) -> None:
        for o, s in zip(self.parts, state_dict["parts"], strict=True):
            o.load_state_dict(s)
        self._sync()  # load_state_dict gives each part new group dicts


def fusable(params: list[nn.Parameter]) -> bool:
    """Whether torch's fused Adam/AdamW kernel takes these parameters: floating point, all on the CPU or all
    on CUDA (where the model is when the optimiser is built; `accelerate` moves CPU-built ones to CUDA)."""
    kinds = {p.device.type for p in params}
    return bool(params) and len(kinds) == 1 and kinds <= {"cpu", "cuda"} and all(p.is_floating_point() for p in params)


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimiser `cfg` names over `model`'s parameter groups. Adam and AdamW use torch's fused kernel
    (one call per group instead of a Python loop of small ops per tensor; the same update): on 2 CPU
    cores it takes a third off a small net's optimiser step (benchmarks/rl_vs_sb3.py measures the loop)."""
    betas = tuple(cfg.betas or ((0.9, 0.99) if cfg.name == "lion" else (0.9, 0.999)))
    if cfg.name == "muon":
        hidden = hidden_matrices(model)
        if not hidden:
            raise ConfigError("optim.name=muon: this model has no hidden 2-D weight matrices; use adamw")
        ids = {id(p) for p in hidden}
        rest = [{**g, "params": [p for p in g["params"] if id(p) not in ids]} for g in param_groups(model, cfg.weight_decay)]
        muon = torch.optim.Muon(hidden, lr=cfg.muon_lr, momentum=cfg.muon_momentum, weight_decay=cfg.weight_decay)
        rest = [g for g in rest if g["params"]]
        fused = fusable([p for g in rest for p in g["params"]]) or None
        return Optimizers(muon, torch.optim.AdamW(rest, lr=cfg.lr, betas=betas, fused=fused))
    groups = param_groups(model, cfg.weight_decay)
    fused = fusable([p for g in groups for p in g["params"]]) or None
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=betas, fused=fused)
    if cfg.name == "lion":
        from lion_pytorch import Lion

        return Lion(groups, lr=cfg.lr, betas=betas)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, fused=fused)


def cycles_momentum(optimizer: torch.optim.Optimizer) -> bool:
    """Whether one-cycle also cycles momentum (SGD) or beta1 (Adam, AdamW, Lion) inversely to the lr, as
    torch does by default. Not for an optimiser without one to cycle: SGD with momentum 0 (it would gain
    momentum) and Muon + AdamW (`Optimizers`, whose groups hold both kinds), which keep their own."""
    defaults = optimizer.defaults
    return "betas" in defaults or defaults.get("momentum", 0) > 0


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: SchedConfig, total_steps: int):
    """A per-step schedule: one-cycle, linear warm-up then cosine or linear decay, or constant."""
    if cfg.name == "onecycle":
        base = [g["lr"] for g in optimizer.param_groups]
        total, pct = max(total_steps, 2), max(cfg.warmup_frac, 1e-3)
        if math.isclose(pct * total, 1.0):  # a warm-up of exactly one step is a zero-length phase (0/0) in torch
            pct = 1.5 / total
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=base, total_steps=total, pct_start=pct,
            cycle_momentum=cycles_momentum(optimizer),
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
