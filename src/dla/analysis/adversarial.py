"""Lab 3.2: accuracy under attack and a gallery of adversarial examples (the attacks are in `dla.attacks`).

Models take images in [0, 1] (normalisation is their first layer), so eps is in pixel units
(8/255 is the usual CIFAR budget) and every adversarial image is clamped to [0, 1]. Attacks do
not change the model's mode: evaluation callers put it in eval mode; adversarial training
attacks the model as it trains.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import torch
from torch import nn

from dla.attacks import attack
from dla.report.plots import plt, save_figure


def parse_eps(text: str) -> list[float]:
    """'0,1/255,8/255' -> [0.0, 0.0039..., 0.0313...]."""
    try:
        return [float(Fraction(part.strip())) for part in text.split(",") if part.strip()]
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"--eps: {text!r} is not a comma-separated list of numbers or fractions like 8/255") from None


def choose_targets(model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: int | str, num_classes: int,
                   seed: int = 0) -> torch.Tensor:
    """Target labels for a targeted attack: class C for every image, a random class other than the
    true one (seeded), or the least likely class of the clean prediction."""
    if isinstance(target, int):
        return torch.full_like(y, target)
    if target == "random":
        shift = torch.randint(1, num_classes, y.shape, generator=torch.Generator().manual_seed(seed))
        return (y + shift) % num_classes
    if target == "least-likely":
        with torch.inference_mode():
            return torch.cat([model(x[i : i + 256]).argmin(1) for i in range(0, len(x), 256)])
    raise ValueError(f"unknown target {target!r}; valid: a class index, random, least-likely")


def accuracy_under_attack(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, method: str, epsilons: Sequence[float],
    steps: int = 10, batch_size: int = 256, targets: torch.Tensor | None = None,
) -> list[dict]:
    """Accuracy of `model` (in eval mode) on adversarial versions of (x, y) at each eps. With
    `targets`, the attack is targeted and each row also has the success rate: the share of images
    now classified as their target."""
    model.eval()
    rows = []
    for eps in epsilons:
        correct = hit = 0
        for i in range(0, len(y), batch_size):
            xb, yb = x[i : i + batch_size], y[i : i + batch_size]
            tb = None if targets is None else targets[i : i + batch_size]
            adv = attack(method, model, xb, yb if tb is None else tb, eps, steps, targeted=tb is not None)
            with torch.inference_mode():
                pred = model(adv).argmax(1)
            correct += int((pred == yb).sum())
            if tb is not None:
                hit += int((pred == tb).sum())
        row = {"eps": eps, "eps_255": eps * 255, "acc": correct / len(y)}
        if targets is not None:
            row["success"] = hit / len(y)
        rows.append(row)
    return rows


def plot_gallery(model: nn.Module, x: torch.Tensor, y: torch.Tensor, classes: Sequence[str], method: str,
                 epsilons: Sequence[float], path, steps: int = 10, targets: torch.Tensor | None = None):
    """Rows: examples; columns: clean, then (perturbation, adversarial image) per eps, with predictions
    (and, for a targeted attack, each image's target)."""
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
        aim = "" if targets is None else f", target {classes[targets[i]]}"
        show(axes[i][0], x[i], f"clean: {classes[c]} {p:.2f}\n(true {classes[y[i]]}{aim})")
    for j, eps in enumerate(eps_list):
        adv = attack(method, model, x, y if targets is None else targets, eps, steps, targeted=targets is not None)
        with torch.inference_mode():
            probs = model(adv).softmax(1)
        for i in range(len(x)):
            p, c = probs[i].max(0)
            show(axes[i][1 + 2 * j], (adv[i] - x[i]) / (2 * eps) + 0.5, f"perturbation\neps {eps * 255:.1f}/255")
            show(axes[i][2 + 2 * j], adv[i], f"{method}: {classes[c]} {p:.2f}")
    return save_figure(fig, path)
