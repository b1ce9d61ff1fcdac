"""Lab 3.1 and 3.3: out-of-distribution scores and their metrics.

Convention: every score is higher for inputs that look more in-distribution (ID). So MSP is the
max softmax probability (the original's "1 - MSP" OOD score, negated), energy is the negative free
energy T * logsumexp(logits / T), and Mahalanobis is minus the smallest class distance.

Models take images in [0, 1] (normalisation is their first layer), so input perturbations (ODIN,
Mahalanobis pre-processing) are taken in pixel space and clamped to [0, 1].
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve
from torch import nn

DETECTORS = ("msp", "maxlogit", "energy", "odin", "mahalanobis")


# ---------------------------------------------------------------------------------------------
# Scores from logits


def msp(logits: torch.Tensor) -> torch.Tensor:
    """Maximum softmax probability."""
    return logits.softmax(1).max(1).values


def max_logit(logits: torch.Tensor) -> torch.Tensor:
    return logits.max(1).values


def energy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Negative free energy, T * logsumexp(logits / T)."""
    return temperature * torch.logsumexp(logits / temperature, dim=1)


def _batches(x: torch.Tensor, batch_size: int) -> Iterable[torch.Tensor]:
    for i in range(0, len(x), batch_size):
        yield x[i : i + batch_size]


@torch.inference_mode()
def logits_of(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    return torch.cat([model(b).float() for b in _batches(x, batch_size)])


# ---------------------------------------------------------------------------------------------
# ODIN: temperature scaling plus an input perturbation that raises the max softmax


def odin_direction(model: nn.Module, x: torch.Tensor, temperature: float) -> torch.Tensor:
    """sign of d log max softmax(f(x) / T) / dx: the direction ODIN moves each input.

    It depends on T but not on epsilon, so a T x epsilon grid needs one backward pass per T.
    """
    x = x.clone().requires_grad_(True)
    logits = model(x).float() / temperature
    log_probs = logits.log_softmax(1)
    top = log_probs.gather(1, logits.argmax(1, keepdim=True)).sum()
    (grad,) = torch.autograd.grad(top, x)
    return grad.sign()


def odin_scores_from(model: nn.Module, x: torch.Tensor, direction: torch.Tensor, temperature: float, eps: float):
    with torch.inference_mode():
        x_adj = (x + eps * direction).clamp(0, 1) if eps else x
        return (model(x_adj).float() / temperature).softmax(1).max(1).values


def odin(model: nn.Module, x: torch.Tensor, temperature: float = 1000.0, eps: float = 0.0014, batch_size: int = 256):
    """ODIN scores (Liang et al. 2018): max softmax at temperature T after a step of size eps."""
    out = []
    for b in _batches(x, batch_size):
        direction = odin_direction(model, b, temperature) if eps else torch.zeros_like(b)
        out.append(odin_scores_from(model, b, direction, temperature, eps))
    return torch.cat(out)


def odin_grid(
    model: nn.Module, x: torch.Tensor, temperatures: Sequence[float], epsilons: Sequence[float], batch_size: int = 256
) -> dict[tuple[float, float], torch.Tensor]:
    """ODIN scores for every (T, eps): one backward pass per T and batch, forward passes per eps."""
    scores: dict[tuple[float, float], list[torch.Tensor]] = {(t, e): [] for t in temperatures for e in epsilons}
    for b in _batches(x, batch_size):
        for t in temperatures:
            direction = odin_direction(model, b, t)
            for e in epsilons:
                scores[(t, e)].append(odin_scores_from(model, b, direction, t, e))
    return {k: torch.cat(v) for k, v in scores.items()}


def odin_grid_naive(model, x, temperatures, epsilons, batch_size: int = 256):
    """The same grid with one backward pass per cell: the baseline the shared-gradient grid is checked against."""
    return {(t, e): odin(model, x, t, e, batch_size) for t in temperatures for e in epsilons}


# ---------------------------------------------------------------------------------------------
# Mahalanobis: class-conditional Gaussians with a tied covariance on penultimate features


def last_linear(model: nn.Module) -> nn.Linear:
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not layers:
        raise ValueError("the model has no Linear layer to take penultimate features from")
    return layers[-1]


def penultimate(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(features entering the final Linear layer, logits), with gradients kept."""
    captured = {}
    hook = last_linear(model).register_forward_hook(lambda m, inp, out: captured.setdefault("f", inp[0]))
    try:
        logits = model(x)
    finally:
        hook.remove()
    return captured["f"].float(), logits


@dataclass
class Mahalanobis:
    """Fitted class means and the shared precision matrix of penultimate features."""

    means: torch.Tensor  # (classes, d)
    precision: torch.Tensor  # (d, d)

    @classmethod
    def fit(cls, model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> "Mahalanobis":
        with torch.inference_mode():
            feats = torch.cat([penultimate(model, b)[0] for b in _batches(x, batch_size)]).double()
        classes = int(y.max()) + 1
        means = torch.stack([feats[y == c].mean(0) for c in range(classes)])
        centred = feats - means[y]
        cov = centred.T @ centred / len(feats)
        return cls(means.float(), torch.linalg.pinv(cov, hermitian=True).float())

    def distances(self, feats: torch.Tensor) -> torch.Tensor:
        diff = feats[:, None, :] - self.means[None]  # (n, classes, d)
        return torch.einsum("ncd,de,nce->nc", diff, self.precision, diff)

    def scores(self, model: nn.Module, x: torch.Tensor, eps: float = 0.0, batch_size: int = 256) -> torch.Tensor:
        """-min_c distance, optionally after the input step that lowers the closest distance (Lee et al. 2018)."""
        out = []
        for b in _batches(x, batch_size):
            if eps:
                b = b.clone().requires_grad_(True)
                closest = self.distances(penultimate(model, b)[0]).min(1).values.sum()
                (grad,) = torch.autograd.grad(closest, b)
                b = (b.detach() - eps * grad.sign()).clamp(0, 1)
            with torch.inference_mode():
                out.append(-self.distances(penultimate(model, b)[0]).min(1).values)
        return torch.cat(out)


# ---------------------------------------------------------------------------------------------
# Metrics (scikit-learn): ID is the positive class for AUROC and AUPR-In


def ood_metrics(id_scores: torch.Tensor | np.ndarray, ood_scores: torch.Tensor | np.ndarray) -> dict[str, float]:
    """AUROC, AUPR-In, AUPR-Out and FPR at 95% TPR (the share of OOD inputs kept when 95% of ID are)."""
    s_id, s_ood = np.asarray(id_scores, dtype=np.float64), np.asarray(ood_scores, dtype=np.float64)
    labels = np.concatenate([np.ones_like(s_id), np.zeros_like(s_ood)])
    scores = np.concatenate([s_id, s_ood])
    fpr, tpr, _ = roc_curve(labels, scores)
    return {
        "auroc": float(roc_auc_score(labels, scores)),
        "aupr_in": float(average_precision_score(labels, scores)),
        "aupr_out": float(average_precision_score(1 - labels, -scores)),
        "fpr95": float(fpr[np.searchsorted(tpr, 0.95, side="left")]),
    }
