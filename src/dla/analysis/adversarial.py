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

from tqdm.auto import tqdm

from dla import attacks
from dla.attacks import attack, stage_key
from dla.report.plots import plt, save_figure, show_image


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


GALLERY = 6  # examples in an attack gallery


def _predict(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def accuracy_under_attack(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, method: str, epsilons: Sequence[float],
    steps: int = 10, batch_size: int = 256, targets: torch.Tensor | None = None, keep: dict | None = None,
) -> list[dict]:
    """Accuracy of `model` (in eval mode) on adversarial versions of (x, y) at each eps, with the
    clean accuracy and the number of images in every row. With `targets`, the attack is targeted
    and each row also has the success rate: the share of images now classified as their target.
    `keep`, a dict, receives the first GALLERY adversarial images per eps (for `plot_gallery`)."""
    model.eval()
    clean = float((_predict(model, x) == y).float().mean())
    rows = []
    if method == "autoattack":
        with torch.no_grad():
            num_classes = model(x[:1]).shape[1]
    bar = tqdm(total=len(epsilons) * len(y), desc=method, unit="img", leave=False)
    for eps in epsilons:
        correct = hit = 0
        left = [0] * len(attacks.AUTOATTACK_STAGES)
        for i in range(0, len(y), batch_size):
            xb, yb = x[i : i + batch_size], y[i : i + batch_size]
            tb = None if targets is None else targets[i : i + batch_size]
            if method == "autoattack":  # with the images each of its attacks leaves correct
                adv, after = attacks.autoattack_breakdown(model, xb, yb, eps, num_classes)
                left = [a + b for a, b in zip(left, after)]
            else:
                adv = attack(method, model, xb, yb if tb is None else tb, eps, steps, targeted=tb is not None)
            if keep is not None and i == 0:
                keep[eps] = adv[:GALLERY]
            pred = _predict(model, adv)
            correct += int((pred == yb).sum())
            if tb is not None:
                hit += int((pred == tb).sum())
            bar.update(len(yb))
        row = {"eps": eps, "eps_255": eps * 255, "acc": correct / len(y), "clean": clean, "n": len(y)}
        if targets is not None:
            row["success"] = hit / len(y)
        if method == "autoattack":
            row.update({stage_key(name): n / len(y) for name, n in zip(attacks.AUTOATTACK_STAGES, left)})
        rows.append(row)
    bar.close()
    return rows


def cw_rows(model: nn.Module, x: torch.Tensor, y: torch.Tensor, radii: Sequence[float], steps: int = 100,
            cs: Sequence[float] = (1.0,), batch_size: int = 256, keep: dict | None = None) -> tuple[list[dict], float]:
    """Carlini-Wagner L2 once per image and value of c in `cs`, then the accuracy left at each L2 radius: an image
    counts as broken at radius r when CW changed its prediction with a perturbation of L2 norm <= r.
    With several c, each image keeps its smallest successful perturbation over them (what the paper's
    search over c finds). Also the median L2 norm of the successful perturbations (nan when none
    succeeded). `keep` receives the first GALLERY adversarial images (the kept ones) under "cw"."""
    model.eval()
    correct_clean, broken_at = [], []
    bar = tqdm(total=len(cs) * -(-len(y) // batch_size), desc="cw", unit="batch", leave=False)
    for i in range(0, len(y), batch_size):
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        ok = _predict(model, xb) == yb
        best, best_adv = torch.full((len(yb),), float("inf"), device=xb.device), None
        for value in cs:
            adv = attack("cw", model, xb, yb, 0.0, steps, c=value)
            dist = (adv - xb).flatten(1).norm(dim=1)
            better = ok & (_predict(model, adv) != yb) & (dist < best)
            best = torch.where(better, dist, best)
            best_adv = adv if best_adv is None else torch.where(better[:, None, None, None], adv, best_adv)
            bar.update()
        if keep is not None and i == 0:
            keep["cw"] = best_adv[:GALLERY]
        correct_clean.append(ok)
        broken_at.append(best)
    bar.close()
    ok, dist = torch.cat(correct_clean), torch.cat(broken_at)
    rows = [{"eps": r, "acc": float((ok & (dist > r)).float().mean()), "n": len(y)} for r in radii]
    finite = dist[torch.isfinite(dist)]
    return rows, float(finite.median()) if len(finite) else float("nan")


def plot_gallery(model: nn.Module, x: torch.Tensor, y: torch.Tensor, classes: Sequence[str], method: str,
                 epsilons: Sequence[float], path, steps: int = 10, targets: torch.Tensor | None = None,
                 c: float = 1.0, adversarials: dict | None = None):
    """Rows: examples; columns: clean, then (perturbation, adversarial image) per eps, with predictions
    (and, for a targeted attack, each image's target). Perturbations are scaled to their largest
    pixel change; for cw (one column) their L2 norm is in the title. `adversarials` (eps, or "cw",
    -> images, as `accuracy_under_attack` and `cw_rows` keep them) saves attacking the images again."""
    model.eval()
    adversarials = adversarials or {}
    eps_list = ["cw"] if method == "cw" else [e for e in epsilons if e > 0][:3]
    cols = 1 + 2 * len(eps_list)
    fig, axes = plt.subplots(len(x), cols, figsize=(1.9 * cols, 2.1 * len(x)), squeeze=False)

    with torch.inference_mode():
        clean_probs = model(x).softmax(1)
    for i in range(len(x)):
        p, k = clean_probs[i].max(0)
        aim = "" if targets is None else f", target {classes[targets[i]]}"
        show_image(axes[i][0], x[i], title=f"clean: {classes[k]} {p:.2f}\n(true {classes[y[i]]}{aim})")
    for j, eps in enumerate(eps_list):
        adv = adversarials.get(eps)
        if adv is None or len(adv) < len(x):
            adv = attack(method, model, x, y if targets is None else targets, 0.0 if eps == "cw" else eps, steps,
                         targeted=targets is not None, c=c)
        adv = adv[: len(x)]
        with torch.inference_mode():
            probs = model(adv).softmax(1)
        for i in range(len(x)):
            p, k = probs[i].max(0)
            delta = adv[i] - x[i]
            size = f"L2 {delta.norm():.2f}" if method == "cw" else f"eps {eps * 255:.1f}/255"
            show_image(axes[i][1 + 2 * j], delta / (2 * delta.abs().max().clamp_min(1e-12)) + 0.5,
                       title=f"perturbation\n{size}", fontsize=7)
            show_image(axes[i][2 + 2 * j], adv[i], title=f"{method}: {classes[k]} {p:.2f}", fontsize=7)
    return save_figure(fig, path)
