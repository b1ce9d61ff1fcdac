"""Lab 3.1 and 3.3: out-of-distribution scores and their metrics.

Convention: every score is higher for inputs that look more in-distribution (ID). So MSP is the
max softmax probability (the original's "1 - MSP" OOD score, negated), energy is the negative free
energy T * logsumexp(logits / T), and Mahalanobis is minus the smallest class distance.

Post-hoc detectors on the penultimate features (the input of the model's last nn.Linear): Mahalanobis, KNN,
ReAct, ViM, ASH-S and GradNorm. Each is a small dataclass with `fit(model, x_train, y_train, ...)` and
`scores(model, x)`; `fit_detector(name, ...)` builds one by name. In dla's models (MLP, CNN with either head)
those features come out of a ReLU (or an average of ReLU maps), so they are >= 0, which ReAct and ASH assume.
They are written here, not taken from pytorch-ood at runtime (it is the reference in tests/test_ood_detectors.py):
dla's models have no backbone/head split to hand its ReAct and ASH (the features come from a hook), its KNN
goes through scikit-learn with n_jobs=-1 and refuses k > fit size, its ASH-S gives NaN for an all-zero
feature vector, and its GradNorm backpropagates through the whole model per sample where the last layer's
gradient has a closed form. Each is a few lines on top of `penultimate` and `last_linear`.

Models take images in [0, 1] (normalisation is their first layer), so input perturbations (ODIN,
Mahalanobis pre-processing) are taken in pixel space and clamped to [0, 1].
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve
from torch import nn

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
    # the hook must return None: a forward hook's return value replaces the layer's output (the logits)
    hook = last_linear(model).register_forward_hook(lambda m, inp, out: captured.update(f=inp[0]))
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
        feats = features_of(model, x, batch_size).double()
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
# Feature-space detectors: KNN, ReAct, ViM, ASH-S, GradNorm (the features are those entering the last Linear)


_last_features: tuple | None = None  # (key, model, x, features) of the latest `features_of` call


@torch.inference_mode()
def features_of(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Penultimate features (float32) of all of x, in batches.

    The latest result is kept and returned again for the same model and images, unchanged since (their
    tensors' version counters and the model's mode say so): the fitted detectors are fitted one after
    the other on one training sample, which is then embedded once instead of once per detector."""
    global _last_features
    key = (model.training, x._version, tuple(p._version for p in model.parameters()))
    if _last_features is not None and _last_features[1] is model and _last_features[2] is x and _last_features[0] == key:
        return _last_features[3]
    feats = torch.cat([penultimate(model, b)[0] for b in _batches(x, batch_size)])
    _last_features = (key, model, x, feats)
    return feats


def head_logits(model: nn.Module, feats: torch.Tensor) -> torch.Tensor:
    """The model's last Linear applied to (modified) penultimate features, in float32."""
    layer = last_linear(model)
    return F.linear(feats, layer.weight.float(), None if layer.bias is None else layer.bias.float())


def _unit(feats: torch.Tensor) -> torch.Tensor:
    return feats / feats.norm(dim=1, keepdim=True).clamp_min(1e-12)


@dataclass
class KNN:
    """Deep nearest neighbours (Sun et al. 2022): minus the distance from the L2-normalised feature to its
    k-th nearest L2-normalised fit feature. The fit set is the whole of x_train (labels are not used); k is
    clamped to its size, so k=1 scores a fit image 0, the maximum. Exact search with torch.cdist, no FAISS."""

    train: torch.Tensor  # (n, d) unit-norm fit features
    k: int

    @classmethod
    def fit(cls, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, k: int = 50,
            batch_size: int = 512) -> "KNN":
        if k < 1:
            raise ValueError(f"knn: k must be >= 1, got {k}")
        train = _unit(features_of(model, x, batch_size))
        return cls(train, min(k, len(train)))

    @torch.inference_mode()
    def scores(self, model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        out = []
        for b in _batches(x, batch_size):
            z = _unit(penultimate(model, b)[0])
            kth = torch.cdist(z, self.train).kthvalue(self.k, dim=1).indices  # (batch,) one chunk of queries
            # cdist's matmul path loses precision near 0; the chosen neighbour's distance is recomputed exactly
            out.append(-(z - self.train[kth]).norm(dim=1))
        return torch.cat(out)


@dataclass
class ReAct:
    """ReAct (Sun et al. 2021): clip the penultimate features at a threshold, then score the logits with
    energy. The threshold is the `percentile`-th percentile (0-100, 90 in the paper) of all fit activations
    pooled (numpy's linear interpolation, as in the paper's code)."""

    threshold: float

    @classmethod
    def fit(cls, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, percentile: float = 90.0,
            batch_size: int = 512) -> "ReAct":
        if not 0.0 <= percentile <= 100.0:
            raise ValueError(f"react: percentile must be in [0, 100], got {percentile}")
        feats = features_of(model, x, batch_size)
        return cls(float(np.percentile(feats.flatten().cpu().numpy(), percentile)))

    @torch.inference_mode()
    def scores(self, model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        clipped = (penultimate(model, b)[0].clamp(max=self.threshold) for b in _batches(x, batch_size))
        return torch.cat([energy(head_logits(model, f)) for f in clipped])


def vim_principal_dim(feature_dim: int) -> int:
    """ViM's principal-space dimension D for N-dimensional features: 1000 for N >= 2048 and 512 for N >= 768
    (the official code's choices for BiT/ResNet-50 and ViT), else N // 2 (OpenOOD's 256 for ResNet-18's 512,
    e.g. 8 for dla's 16-wide MLP and 64 for a 128-wide head); always between 1 and N - 1 so a residual is left."""
    d = 1000 if feature_dim >= 2048 else 512 if feature_dim >= 768 else feature_dim // 2
    return max(1, min(d, feature_dim - 1))


@dataclass
class ViM:
    """Virtual-logit matching (Wang et al. 2022): energy(logits) - alpha * ||residual||, where the residual is
    the part of x - u outside the D-dimensional principal subspace of the fit features centred at
    u = -pinv(W) b (W, b: the last Linear), and alpha = mean max logit / mean residual norm on the fit set."""

    u: torch.Tensor  # (d,) origin
    residual_basis: torch.Tensor  # (d, d - D) orthonormal basis of the complement of the principal space
    alpha: float

    @classmethod
    def fit(cls, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, dim: int | None = None,
            batch_size: int = 512) -> "ViM":
        feats = features_of(model, x, batch_size).double()
        layer = last_linear(model)
        w = layer.weight.detach().double()
        b = torch.zeros(len(w), dtype=w.dtype, device=w.device) if layer.bias is None else layer.bias.detach().double()
        dim = vim_principal_dim(feats.shape[1]) if dim is None else dim
        if not 0 < dim < feats.shape[1]:
            raise ValueError(f"vim: dim must be in [1, {feats.shape[1] - 1}] for {feats.shape[1]} features, got {dim}")
        u = -torch.linalg.pinv(w) @ b
        centred = feats - u
        _, vecs = torch.linalg.eigh(centred.T @ centred / len(feats))  # ascending eigenvalues
        basis = vecs[:, : feats.shape[1] - dim]  # all but the top `dim` directions
        residual = (centred @ basis).norm(dim=1).mean()
        max_logit = (feats @ w.T + b).max(1).values.mean()
        alpha = float(max_logit / residual.clamp_min(1e-12))  # the clamp: fit features that span <= D dims
        return cls(u.float(), basis.float().contiguous(), alpha)

    def residual(self, feats: torch.Tensor) -> torch.Tensor:
        """||x^{P-perp}||: the norm of the centred features outside the principal space."""
        return ((feats - self.u) @ self.residual_basis).norm(dim=1)

    @torch.inference_mode()
    def scores(self, model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        out = []
        for b in _batches(x, batch_size):
            feats = penultimate(model, b)[0]
            out.append(energy(head_logits(model, feats)) - self.alpha * self.residual(feats))
        return torch.cat(out)


def ash_s(feats: torch.Tensor, prune: float = 0.9) -> torch.Tensor:
    """ASH-S (Djurisic et al. 2023) on (n, d) features: keep the d - round(prune * d) largest of each row (at
    least one), zero the rest, and scale the kept ones by exp(sum of all / sum of kept). prune=0 keeps all, so
    the features are scaled by e. A row whose kept sum is 0 (all-zero ReLU features) stays 0 instead of NaN."""
    keep = max(1, feats.shape[1] - int(np.round(feats.shape[1] * prune)))
    kept, idx = feats.topk(keep, dim=1)
    total, kept_sum = feats.sum(1), kept.sum(1)
    scale = torch.where(kept_sum != 0, total / kept_sum, 0.0)
    return torch.zeros_like(feats).scatter_(1, idx, kept * scale.exp()[:, None])


@dataclass
class ASH:
    """ASH-S on the penultimate features, then energy of the logits. `prune` is the fraction (0-1) of each
    sample's activations set to zero (the paper's pruning percentile p / 100). Nothing to fit."""

    prune: float = 0.9

    def __post_init__(self):
        if not 0.0 <= self.prune < 1.0:
            raise ValueError(f"ash: prune is the fraction of activations zeroed, in [0, 1), got {self.prune}")

    @classmethod
    def fit(cls, model: nn.Module, x: torch.Tensor | None = None, y: torch.Tensor | None = None,
            prune: float = 0.9) -> "ASH":
        return cls(prune)

    @torch.inference_mode()
    def scores(self, model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        shaped = (ash_s(penultimate(model, b)[0], self.prune) for b in _batches(x, batch_size))
        return torch.cat([energy(head_logits(model, f)) for f in shaped])


@torch.inference_mode()
def gradnorm(model: nn.Module, x: torch.Tensor, temperature: float = 1.0, include_bias: bool = False,
             batch_size: int = 512) -> torch.Tensor:
    """GradNorm (Huang et al. 2021): the L1 norm of d KL(uniform || softmax(logits / T)) / d W, W the last
    Linear's weight, per sample. In closed form: d/d logits = (softmax - 1/C) / T, so
    ||grad_W||_1 = ||softmax - 1/C||_1 / T * ||features||_1, and the bias adds ||softmax - 1/C||_1 / T
    (include_bias; the paper uses the weights only). The official code sums the cross-entropy over classes
    instead of averaging it, which multiplies every score by C and keeps the ranking."""
    out = []
    for b in _batches(x, batch_size):
        feats, logits = penultimate(model, b)
        probs = (logits.float() / temperature).softmax(1)
        dlogits = (probs - 1.0 / probs.shape[1]).abs().sum(1) / temperature
        out.append(dlogits * (feats.abs().sum(1) + (1.0 if include_bias else 0.0)))
    return torch.cat(out)


@dataclass
class GradNorm:
    """`gradnorm` behind the shared fit/scores interface; nothing to fit."""

    temperature: float = 1.0
    include_bias: bool = False

    @classmethod
    def fit(cls, model: nn.Module, x: torch.Tensor | None = None, y: torch.Tensor | None = None,
            temperature: float = 1.0, include_bias: bool = False) -> "GradNorm":
        return cls(temperature, include_bias)

    def scores(self, model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        return gradnorm(model, x, self.temperature, self.include_bias, batch_size)


FITTED_DETECTORS = {
    "mahalanobis": Mahalanobis, "knn": KNN, "react": ReAct, "vim": ViM, "ash": ASH, "gradnorm": GradNorm,
}


def _from_logits(score):
    return lambda model, x, fitted, odin_t, odin_eps: score(logits_of(model, x))


def _fitted(name: str):
    return lambda model, x, fitted, odin_t, odin_eps: fitted[name].scores(model, x)


# Every detector by name, the one list (`dla ood --detectors`, its --help and the study read it): a scorer
# (model, x, fitted, odin_t, odin_eps) -> scores, higher = more in-distribution; `fitted` holds the
# FITTED_DETECTORS fitted on training images.
DETECTORS = {
    "msp": _from_logits(msp),
    "maxlogit": _from_logits(max_logit),
    "energy": _from_logits(energy),
    "odin": lambda model, x, fitted, odin_t, odin_eps: odin(model, x, odin_t, odin_eps),
    **{name: _fitted(name) for name in FITTED_DETECTORS},
}


def fit_detector(name: str, model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor, **options):
    """The detector `name` fitted on training images (in [0, 1]) and labels; options go to its `fit`
    (k, percentile, dim, prune, temperature, include_bias, batch_size). Use `.scores(model, x)` on it."""
    if name not in FITTED_DETECTORS:
        raise ValueError(f"fit_detector: unknown detector {name!r}; valid: {', '.join(FITTED_DETECTORS)}")
    return FITTED_DETECTORS[name].fit(model, x_train, y_train, **options)


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
