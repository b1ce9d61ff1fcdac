"""Adversarial examples (Lab 3.2): FGSM, PGD in the L-infinity ball, and FGSM with a random start.

A leaf module: adversarial training (`dla.train.tasks`) and the attack study (`dla.analysis`)
both import it. Models take images in [0, 1] (normalisation is their first layer), so eps is in
pixel units (8/255 is the usual CIFAR budget) and every adversarial image is clamped to [0, 1].
Attacks do not change the model's mode: evaluation callers put it in eval mode; adversarial
training attacks the model as it trains.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _input_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.detach().clone().requires_grad_(True)
    loss = F.cross_entropy(model(x).float(), y)
    (grad,) = torch.autograd.grad(loss, x)
    return grad


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, targeted: bool = False) -> torch.Tensor:
    """Fast gradient sign method. Untargeted: one step up the loss of the true labels `y`.
    Targeted: one step down the loss of the target labels `y`."""
    step = eps * _input_grad(model, x, y).sign()
    return (x - step if targeted else x + step).clamp(0, 1).detach()


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    alpha: float | None = None,
    steps: int = 10,
    random_start: bool = True,
    targeted: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Projected gradient descent in the L-infinity ball of radius eps (Madry et al.), step alpha
    (default 2.5 * eps / steps), optionally from a uniform random start inside the ball."""
    alpha = 2.5 * eps / steps if alpha is None else alpha
    x = x.detach()
    adv = x.clone()
    if random_start:
        noise = torch.rand(x.shape, generator=generator, device=generator.device if generator else "cpu")
        adv = (x + (2 * noise.to(x.device) - 1) * eps).clamp(0, 1)
    for _ in range(steps):
        step = alpha * _input_grad(model, adv, y).sign()
        adv = adv - step if targeted else adv + step
        adv = torch.min(torch.max(adv, x - eps), x + eps).clamp(0, 1).detach()
    return adv


def fgsm_rs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float | None = None,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """FGSM from a random start, step alpha (default 1.25 * eps), projected back to the eps-ball
    (Wong et al. 2020, "Fast is better than free")."""
    return pgd(model, x, y, eps, alpha=1.25 * eps if alpha is None else alpha, steps=1, generator=generator)


def attack(method: str, model: nn.Module, x, y, eps: float, steps: int = 10, alpha: float | None = None,
           targeted: bool = False):
    """`method` at radius eps; untargeted, `y` are the true labels; targeted, `y` are the targets."""
    if eps == 0:
        return x
    if method == "fgsm":
        return fgsm(model, x, y, eps, targeted=targeted)
    if method == "pgd":
        return pgd(model, x, y, eps, alpha, steps, targeted=targeted, generator=torch.Generator().manual_seed(0))
    raise ValueError(f"unknown attack {method!r}; valid: fgsm, pgd")
