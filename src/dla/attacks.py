"""Adversarial examples (Lab 3.2): FGSM, PGD in the L-infinity ball, FGSM with a random start (ours,
the lab's own exercise), and AutoAttack and Carlini-Wagner L2 (through `torchattacks`).

A leaf module: adversarial training (`dla.train.tasks`) and the attack study (`dla.analysis`)
both import it. Models take images in [0, 1] (normalisation is their first layer), so eps is in
pixel units (8/255 is the usual CIFAR budget) and every adversarial image is clamped to [0, 1].
Attacks do not change the model's mode: evaluation callers put it in eval mode; adversarial
training attacks the model as it trains.
"""

from __future__ import annotations

from typing import Any

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


AUTOATTACK_ITERATIONS = 100  # per attack, as in Croce & Hein's standard version
SQUARE_QUERIES = 5000


AUTOATTACK_STAGES = ("APGD-CE", "APGD-T", "FAB-T", "Square")  # the standard version's attacks, in its order


def stage_key(name: str) -> str:
    """The key of a table row's accuracy left after AutoAttack's attack `name` (and those before it)."""
    return "after_" + name.lower().replace("-", "_")


def autoattack_stages(model: nn.Module, eps: float, num_classes: int, seed: int = 0) -> list[tuple[str, Any]]:
    """AutoAttack's standard version (Croce & Hein 2020) in the L-infinity ball as (name, attack) pairs:
    APGD-CE, APGD-T, FAB-T and Square, each a callable (x, y) -> adversarial x.

    Built from torchattacks' four attacks with the original's budgets (100 iterations, every other
    class as a target for APGD-T and FAB-T, 5,000 Square queries): torchattacks' own `AutoAttack`
    class leaves APGD, APGD-T and FAB at their default 10 iterations, a weaker attack than the one
    RobustBench reports."""
    import torchattacks

    common = {"norm": "Linf", "eps": eps, "n_restarts": 1, "seed": seed}
    steps = AUTOATTACK_ITERATIONS
    attacks = (torchattacks.APGD(model, steps=steps, loss="ce", **common),
               torchattacks.APGDT(model, steps=steps, n_classes=num_classes, **common),
               torchattacks.FAB(model, steps=steps, multi_targeted=True, n_classes=num_classes, **common),
               torchattacks.Square(model, n_queries=SQUARE_QUERIES, **common))
    return list(zip(AUTOATTACK_STAGES, attacks))


def run_stages(model: nn.Module, x: torch.Tensor, y: torch.Tensor, stages) -> tuple[torch.Tensor, list[int]]:
    """Each attack of `stages` runs on the images that the clean model and every attack before it left
    correctly classified (as the original AutoAttack does: a misclassified clean image is never attacked);
    an image keeps the first adversarial version that fooled the model. Returns the adversarial images and,
    after each stage, how many images are still correctly classified: the per-attack breakdown that tells
    a robust model from one that only masks gradients (a masked model falls to the black-box Square last)."""
    with torch.no_grad():
        robust = model(x).argmax(1) == y
    adv, left = x.detach().clone(), []
    for _, attack_fn in stages:
        idx = robust.nonzero().flatten()
        if len(idx):
            candidate = attack_fn(x[idx], y[idx]).detach()
            with torch.no_grad():
                fooled = model(candidate).argmax(1) != y[idx]
            adv[idx[fooled]] = candidate[fooled]
            robust[idx[fooled]] = False
        left.append(int(robust.sum()))
    return adv, left


def autoattack_breakdown(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, num_classes: int,
                         seed: int = 0) -> tuple[torch.Tensor, list[int]]:
    """AutoAttack's adversarial images and the images still correct after each of its attacks (`run_stages`)."""
    if eps == 0:
        with torch.no_grad():
            correct = int((model(x).argmax(1) == y).sum())
        return x, [correct] * len(AUTOATTACK_STAGES)
    return run_stages(model, x, y, autoattack_stages(model, eps, num_classes, seed))


def autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, num_classes: int,
               seed: int = 0) -> torch.Tensor:
    """AutoAttack's standard version in the L-infinity ball (`autoattack_stages`): APGD-CE, APGD-T, FAB-T
    and Square, each run on the images the ones before it left correctly classified."""
    return autoattack_breakdown(model, x, y, eps, num_classes, seed)[0]


def cw_l2(model: nn.Module, x: torch.Tensor, y: torch.Tensor, c: float = 1.0, steps: int = 100,
          kappa: float = 0.0, lr: float = 0.01) -> torch.Tensor:
    """Carlini-Wagner L2 (torchattacks): the smallest perturbation it finds that changes the
    prediction, traded against the margin by `c`; images it cannot fool come back unchanged."""
    import torchattacks

    return torchattacks.CW(model, c=c, kappa=kappa, steps=steps, lr=lr)(x, y).detach()


def _autoattack(model, x, y, eps, steps, alpha, targeted, c):
    with torch.no_grad():
        num_classes = model(x[:1]).shape[1]
    return autoattack(model, x, y, eps, num_classes)


# Every attack by name, the one list (`dla attack --method`, its --help and the study read it):
# (model, x, y, eps, steps, alpha, targeted, c) -> adversarial x.
ATTACKS = {
    "fgsm": lambda model, x, y, eps, steps, alpha, targeted, c: fgsm(model, x, y, eps, targeted=targeted),
    "pgd": lambda model, x, y, eps, steps, alpha, targeted, c: pgd(
        model, x, y, eps, alpha, steps, targeted=targeted, generator=torch.Generator().manual_seed(0)),
    "autoattack": _autoattack,
    "cw": lambda model, x, y, eps, steps, alpha, targeted, c: cw_l2(model, x, y, c=c, steps=steps),
}


def attack(method: str, model: nn.Module, x, y, eps: float, steps: int = 10, alpha: float | None = None,
           targeted: bool = False, c: float = 1.0):
    """`method` at radius eps; untargeted, `y` are the true labels; targeted, `y` are the targets
    (fgsm and pgd only). For cw, eps is not a budget and `steps`, `c` are its own."""
    if method not in ATTACKS:
        raise ValueError(f"unknown attack {method!r}; valid: {', '.join(ATTACKS)}")
    if eps == 0 and method != "cw":
        return x
    return ATTACKS[method](model, x, y, eps, steps, alpha, targeted, c)
