"""Lab 3.2: adversarial examples (FGSM, PGD-L-infinity), accuracy under attack and a gallery.

Models take images in [0, 1] (normalisation is their first layer), so eps is in pixel units
(8/255 is the usual CIFAR budget) and every adversarial image is clamped to [0, 1]. Attacks do
not change the model's mode: evaluation callers put it in eval mode; adversarial training
attacks the model as it trains.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn

from dla.report.plots import plt, save_figure


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


def attack(method: str, model: nn.Module, x, y, eps: float, steps: int = 10, alpha: float | None = None):
    if eps == 0:
        return x
    if method == "fgsm":
        return fgsm(model, x, y, eps)
    if method == "pgd":
        return pgd(model, x, y, eps, alpha, steps, generator=torch.Generator().manual_seed(0))
    raise ValueError(f"unknown attack {method!r}; valid: fgsm, pgd")


def parse_eps(text: str) -> list[float]:
    """'0,1/255,8/255' -> [0.0, 0.0039..., 0.0313...]."""
    try:
        return [float(Fraction(part.strip())) for part in text.split(",") if part.strip()]
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"--eps: {text!r} is not a comma-separated list of numbers or fractions like 8/255") from None


def accuracy_under_attack(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, method: str, epsilons: Sequence[float],
    steps: int = 10, batch_size: int = 256,
) -> list[dict]:
    """Accuracy of `model` (in eval mode) on adversarial versions of (x, y) at each eps."""
    model.eval()
    rows = []
    for eps in epsilons:
        correct = 0
        for i in range(0, len(y), batch_size):
            xb, yb = x[i : i + batch_size], y[i : i + batch_size]
            adv = attack(method, model, xb, yb, eps, steps)
            with torch.inference_mode():
                correct += int((model(adv).argmax(1) == yb).sum())
        rows.append({"eps": eps, "eps_255": eps * 255, "acc": correct / len(y)})
    return rows


def plot_gallery(model: nn.Module, x: torch.Tensor, y: torch.Tensor, classes: Sequence[str], method: str,
                 epsilons: Sequence[float], path, steps: int = 10):
    """Rows: examples; columns: clean, then (perturbation, adversarial image) per eps, with predictions."""
    model.eval()
    eps_list = [e for e in epsilons if e > 0][:3]
    cols = 1 + 2 * len(eps_list)
    fig, axes = plt.subplots(len(x), cols, figsize=(1.9 * cols, 2.1 * len(x)), squeeze=False)

    def show(ax, img, title):
        img = img.permute(1, 2, 0).cpu().numpy()
        ax.imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray" if img.shape[2] == 1 else None,
                  vmin=img.min(), vmax=img.max())
        ax.set_title(title, fontsize=7)
        ax.axis("off")

    with torch.inference_mode():
        clean_probs = model(x).softmax(1)
    for i in range(len(x)):
        p, c = clean_probs[i].max(0)
        show(axes[i][0], x[i], f"clean: {classes[c]} {p:.2f}\n(true {classes[y[i]]})")
    for j, eps in enumerate(eps_list):
        adv = attack(method, model, x, y, eps, steps)
        with torch.inference_mode():
            probs = model(adv).softmax(1)
        for i in range(len(x)):
            p, c = probs[i].max(0)
            show(axes[i][1 + 2 * j], (adv[i] - x[i]) / (2 * eps) + 0.5, f"perturbation\neps {eps * 255:.1f}/255")
            show(axes[i][2 + 2 * j], adv[i], f"{method}: {classes[c]} {p:.2f}")
    return save_figure(fig, path)
