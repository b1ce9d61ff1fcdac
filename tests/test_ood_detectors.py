"""Lab 3.x: the feature-space OOD detectors (KNN, ReAct, ViM, ASH-S, GradNorm) against references.

Each detector is checked against a computation written straight from its paper (numpy, or a loop over samples
with autograd) and, where it has one, against pytorch-ood's detector on the same features (pytorch-ood scores
are outlier scores, higher = OOD, so they are the negatives of ours). Plus a property of each that can fail.
"""

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

from dla.analysis import ood
from dla.models import build_model
from dla.models.cnn import CNNConfig
from dla.models.mlp import MLPConfig

NEW = ("knn", "react", "vim", "ash", "gradnorm")


def toy_model(seed=0, in_shape=(1, 4, 4), classes=3):
    torch.manual_seed(seed)
    return build_model(MLPConfig(hidden=[16], dropout=0.0), in_shape, classes, (0.5,), (0.25,)).eval()


def toy_data(n=120, seed=1, classes=3):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 4, 4, generator=g), torch.randint(0, classes, (n,), generator=g)


def feats_np(model, x):
    return ood.features_of(model, x).double().numpy()


def head_np(model):
    layer = ood.last_linear(model)
    return layer.weight.detach().double().numpy(), layer.bias.detach().double().numpy()


def pytorch_ood():
    return pytest.importorskip("pytorch_ood.detector")


def test_detector_names():
    assert tuple(ood.DETECTORS) == (
        "msp", "maxlogit", "energy", "odin", "mahalanobis", "knn", "react", "vim", "ash", "gradnorm",
    )
    assert set(ood.FITTED_DETECTORS) == {"mahalanobis", *NEW} and set(ood.FITTED_DETECTORS) <= set(ood.DETECTORS)
    model, (x, y) = toy_model(), toy_data()
    assert isinstance(ood.fit_detector("mahalanobis", model, x, y), ood.Mahalanobis)
    with pytest.raises(ValueError, match="unknown detector 'msp'"):
        ood.fit_detector("msp", model, x, y)


@pytest.mark.parametrize("name", ["mahalanobis", *NEW])
def test_scores_are_1d_finite_and_batch_invariant(name):
    model, (x, y) = toy_model(), toy_data()
    det = ood.fit_detector(name, model, x, y)
    s = det.scores(model, x[:40])
    assert s.shape == (40,) and s.dtype == torch.float32 and torch.isfinite(s).all()
    assert torch.allclose(det.scores(model, x[:40], batch_size=7), s, atol=1e-5)


def test_penultimate_features_are_relu_outputs():
    """ReAct and ASH assume non-negative features: true for the MLP and both CNN heads."""
    torch.manual_seed(0)
    x = torch.rand(6, 1, 8, 8)
    models = [toy_model(in_shape=(1, 8, 8))] + [
        build_model(CNNConfig(depth=9, width=2, head=head, fc_width=8), (1, 8, 8), 3, (0.5,), (0.25,)).eval()
        for head in ("original", "gap")
    ]
    for model in models:
        feats, logits = ood.penultimate(model, x)
        assert (feats >= 0).all() and logits.shape == (6, 3)
        assert torch.allclose(logits, model(x), atol=1e-6)  # the hook leaves the model's output alone
        assert torch.allclose(ood.head_logits(model, feats), logits, atol=1e-6)


# --- KNN ---------------------------------------------------------------------------------------


def test_knn_matches_a_loop_over_samples_and_pytorch_ood():
    model, (x, y) = toy_model(), toy_data()
    q = torch.rand(25, 1, 4, 4)
    det = ood.KNN.fit(model, x, y, k=5)
    unit = lambda f: f / np.linalg.norm(f, axis=1, keepdims=True)  # noqa: E731
    train, test = unit(feats_np(model, x)), unit(feats_np(model, q))
    manual = [-np.sort(np.linalg.norm(train - z, axis=1))[4] for z in test]
    assert np.allclose(det.scores(model, q).numpy(), manual, atol=1e-5)

    ref = pytorch_ood().KNN(None, k=5).fit_features(ood.features_of(model, x), y)
    theirs = -ref.predict_features(ood.features_of(model, q)).numpy()
    assert np.allclose(det.scores(model, q).numpy(), theirs, atol=1e-5)


def test_knn_k1_scores_fit_images_zero_and_clamps_k():
    model, (x, y) = toy_model(), toy_data(n=60)
    s = ood.KNN.fit(model, x, y, k=1).scores(model, x)
    assert torch.equal(s, torch.zeros_like(s))  # each fit image is its own nearest neighbour, at distance 0
    assert ood.KNN.fit(model, x, y).k == 50 and ood.KNN.fit(model, x[:10], y[:10]).k == 10
    far = ood.KNN.fit(model, x[:10], y[:10]).scores(model, x[:3])  # k = fit size: the farthest fit feature
    train, test = ood.features_of(model, x[:10]), ood.features_of(model, x[:3])
    cos = torch.nn.functional.normalize(test, dim=1) @ torch.nn.functional.normalize(train, dim=1).T
    assert torch.allclose(far, -(2 - 2 * cos.min(1).values).sqrt(), atol=1e-5)


# --- ReAct -------------------------------------------------------------------------------------


def test_react_matches_numpy_and_pytorch_ood():
    model, (x, y) = toy_model(), toy_data()
    q = torch.rand(25, 1, 4, 4)
    det = ood.ReAct.fit(model, x, y)
    clip = np.percentile(feats_np(model, x), 90)
    assert det.threshold == pytest.approx(clip, rel=1e-5)
    w, b = head_np(model)
    manual = logsumexp(np.minimum(feats_np(model, q), clip) @ w.T + b, axis=1)
    assert np.allclose(det.scores(model, q).numpy(), manual, atol=1e-5)

    layer = ood.last_linear(model)
    ref = pytorch_ood().ReAct(backbone=None, head=lambda f: layer(f), percentile=0.9)
    ref.fit_feature_maps(ood.features_of(model, x), y)
    assert ref.threshold == pytest.approx(det.threshold, rel=1e-5)
    with torch.no_grad():
        theirs = -ref.predict_feature_maps(ood.features_of(model, q))
    assert torch.allclose(det.scores(model, q), theirs, atol=1e-5)


def test_react_with_a_huge_threshold_is_energy_and_clips_ten_percent():
    model, (x, y) = toy_model(), toy_data()
    assert torch.allclose(ood.ReAct(1e9).scores(model, x), ood.energy(ood.logits_of(model, x)), atol=1e-6)
    det = ood.ReAct.fit(model, x, y, percentile=90)
    assert (ood.features_of(model, x) > det.threshold).float().mean() == pytest.approx(0.10, abs=0.01)
    assert not torch.allclose(det.scores(model, x), ood.energy(ood.logits_of(model, x)))
    with pytest.raises(ValueError, match="percentile"):
        ood.ReAct.fit(model, x, y, percentile=900)


# --- ViM ---------------------------------------------------------------------------------------


def vim_reference(model, x_train, x_test, dim):
    """The official code (haoqiwang/vim, benchmark.py) in numpy."""
    w, b = head_np(model)
    f_train, f_test = feats_np(model, x_train), feats_np(model, x_test)
    u = -np.linalg.pinv(w) @ b
    cov = (f_train - u).T @ (f_train - u) / len(f_train)  # sklearn's EmpiricalCovariance(assume_centered=True)
    vals, vecs = np.linalg.eig(cov)
    ns = np.ascontiguousarray(vecs.T[np.argsort(vals * -1)[dim:]].T).real
    alpha = (f_train @ w.T + b).max(1).mean() / np.linalg.norm((f_train - u) @ ns, axis=-1).mean()
    score = logsumexp(f_test @ w.T + b, axis=-1) - alpha * np.linalg.norm((f_test - u) @ ns, axis=-1)
    return score, alpha, u, vecs[:, np.argsort(vals * -1)[:dim]].real


def test_vim_matches_the_official_code_and_pytorch_ood():
    model, (x, y) = toy_model(), toy_data(n=200)
    q = torch.rand(25, 1, 4, 4)
    det = ood.ViM.fit(model, x, y)
    manual, alpha, _, _ = vim_reference(model, x, q, dim=8)  # D = 16 // 2
    assert det.alpha == pytest.approx(alpha, rel=1e-4)
    assert np.allclose(det.scores(model, q).numpy(), manual, atol=1e-4)

    layer = ood.last_linear(model)
    ref = pytorch_ood().ViM(None, d=8, w=layer.weight, b=layer.bias).fit_features(ood.features_of(model, x), y)
    assert ref.alpha == pytest.approx(det.alpha, rel=1e-4)
    theirs = -ref.predict_features(ood.features_of(model, q)).numpy()
    assert np.allclose(det.scores(model, q).numpy(), theirs, atol=1e-4)


def test_vim_residual_is_zero_inside_the_principal_space():
    model, (x, y) = toy_model(), toy_data(n=200)
    det = ood.ViM.fit(model, x, y, dim=5)
    _, _, u, principal = vim_reference(model, x, x[:1], dim=5)
    inside = torch.tensor(u + principal @ np.array([3.0, -1.0, 0.5, 2.0, -4.0]), dtype=torch.float32)[None]
    assert det.residual(inside).item() == pytest.approx(0.0, abs=1e-4)
    away = det.residual_basis[:, :1].T * 2.5  # a unit vector of the complement, times 2.5
    assert det.residual(inside + away).item() == pytest.approx(2.5, abs=1e-4)
    assert det.residual_basis.shape == (16, 11)


def test_vim_principal_dim_rule():
    assert [ood.vim_principal_dim(n) for n in (2, 3, 16, 32, 256, 512, 768, 1024, 2048)] == [
        1, 1, 8, 16, 128, 256, 512, 512, 1000,
    ]
    model, (x, y) = toy_model(), toy_data()
    with pytest.raises(ValueError, match="dim must be in"):
        ood.ViM.fit(model, x, y, dim=16)


# --- ASH-S -------------------------------------------------------------------------------------


def ash_s_reference(f, prune):
    """ASH-S per sample, from the paper: prune below the percentile, then scale by exp(s1 / s2)."""
    out = np.zeros_like(f)
    for i, row in enumerate(f):
        keep = len(row) - int(np.round(len(row) * prune))
        top = np.argsort(-row, kind="stable")[:keep]
        out[i, top] = row[top] * np.exp(row.sum() / row[top].sum())
    return out


def test_ash_matches_a_loop_over_samples_and_pytorch_ood():
    model = toy_model()
    q = torch.rand(25, 1, 4, 4)
    w, b = head_np(model)
    for prune in (0.9, 0.65):
        manual = logsumexp(ash_s_reference(feats_np(model, q), prune) @ w.T + b, axis=1)
        assert np.allclose(ood.ASH(prune).scores(model, q).numpy(), manual, atol=1e-4)

    layer = ood.last_linear(model)
    ref = pytorch_ood().ASH(backbone=None, head=lambda f: layer(f.flatten(1)), variant="ash-s", percentile=0.9)
    with torch.no_grad():
        theirs = -ref.predict_feature_maps(ood.features_of(model, q)[:, :, None, None])
    assert torch.allclose(ood.ASH().scores(model, q), theirs, atol=1e-4)


def test_ash_properties():
    model, (x, y) = toy_model(), toy_data()
    feats = ood.features_of(model, x)
    # prune=0 keeps everything and ASH-S scales it by exp(sum / sum) = e: energy of the logits of e * features
    scaled = ood.energy(ood.head_logits(model, np.e * feats))
    assert torch.allclose(ood.ASH(0.0).scores(model, x), scaled, atol=1e-5)
    # at most one activation kept (prune near 1): the largest, scaled by exp(sum / max)
    top = ood.ash_s(feats, 0.99)
    assert ((top != 0).sum(1) <= 1).all()
    assert torch.allclose(top.max(1).values, feats.max(1).values * (feats.sum(1) / feats.max(1).values).exp())
    # an all-zero feature vector stays zero (pytorch-ood's ASH-S divides 0 by 0 here)
    assert torch.equal(ood.ash_s(torch.zeros(2, 16), 0.9), torch.zeros(2, 16))
    assert ood.fit_detector("ash", model, x, y).prune == 0.9
    with pytest.raises(ValueError, match="fraction"):
        ood.ASH(90)


# --- GradNorm ----------------------------------------------------------------------------------


def gradnorm_reference(model, x, temperature, include_bias):
    """One backward pass per sample of KL(uniform || softmax(logits / T)), as in the paper's code."""
    layer, out = ood.last_linear(model), []
    for xi in x:
        model.zero_grad()
        log_p = (model(xi[None]) / temperature).log_softmax(1)
        uniform = torch.full_like(log_p, 1 / log_p.shape[1])
        torch.nn.functional.kl_div(log_p, uniform, reduction="sum").backward()
        norm = layer.weight.grad.abs().sum() + (layer.bias.grad.abs().sum() if include_bias else 0)
        out.append(norm.item())
    model.zero_grad()
    return np.array(out)


@pytest.mark.parametrize("temperature,include_bias", [(1.0, False), (2.0, True)])
def test_gradnorm_matches_autograd_per_sample(temperature, include_bias):
    model, q = toy_model(), torch.rand(20, 1, 4, 4)
    got = ood.GradNorm(temperature, include_bias).scores(model, q, batch_size=8).numpy()
    assert np.allclose(got, gradnorm_reference(model, q, temperature, include_bias), rtol=1e-4, atol=1e-7)


def test_gradnorm_matches_pytorch_ood():
    model, q = toy_model(), torch.rand(20, 1, 4, 4)
    weight = next(n for n, p in model.named_parameters() if p is ood.last_linear(model).weight)
    ref = pytorch_ood().GradNorm(model, param_filter=lambda n: n == weight)
    assert torch.allclose(ood.gradnorm(model, q), -ref.predict(q), rtol=1e-4)


def test_gradnorm_is_zero_for_a_uniform_prediction():
    model, (x, _) = toy_model(), toy_data()
    with torch.no_grad():
        ood.last_linear(model).weight.zero_()  # every logit = its bias; equal biases -> uniform softmax
        ood.last_linear(model).bias.fill_(0.3)
    assert torch.allclose(ood.gradnorm(model, x, include_bias=True), torch.zeros(len(x)), atol=1e-7)


def test_detectors_fitted_on_one_sample_embed_it_once_and_again_after_the_weights_change():
    model = toy_model()
    x, y = toy_data()
    calls = []
    model.register_forward_hook(lambda m, inp, out: calls.append(len(inp[0])))
    fitted = {d: ood.fit_detector(d, model, x, y) for d in ("mahalanobis", "knn", "react", "vim")}
    assert sum(calls) == len(x)  # one pass over the fit images for the four detectors
    reference = ood.features_of(model, x)
    assert sum(calls) == len(x)
    with torch.no_grad():
        next(model.parameters()).mul_(2.0)  # changed in place: the kept features are stale
    changed = ood.features_of(model, x)
    assert sum(calls) == 2 * len(x) and not torch.equal(changed, reference)
    assert torch.equal(ood.features_of(model, x.clone()), changed) and sum(calls) == 3 * len(x)  # other images
    assert fitted["knn"].train.shape == (len(x), reference.shape[1])
