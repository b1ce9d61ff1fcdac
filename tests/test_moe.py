"""Mixture-of-Experts in the Lab 2.1 GPT: exact against the dense model, causal, cached generation, the
auxiliary losses (trained on, never reported), the routing statistics and a run's outputs."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import SHARED, need

from dla import experiment
from dla.cli import main
from dla.config import load_experiment
from dla.data.text import import_inferno
from dla.errors import ConfigError
from dla.models.gpt import GPT, GPTConfig, MoE, is_moe_block, load_balancing_loss

BASE = GPTConfig(vocab_size=37, block_size=16, n_layer=2, n_head=2, n_embd=32)


def moe_cfg(**kw) -> GPTConfig:
    return dataclasses.replace(BASE, **{"moe_experts": 4, "moe_top_k": 2, "moe_every": 1, **kw})


def test_one_expert_of_top_1_is_exactly_the_dense_model():
    torch.manual_seed(0)
    dense = GPT(BASE).eval()
    moe = GPT(moe_cfg(moe_experts=1, moe_top_k=1)).eval()
    state = {k: v for k, v in dense.state_dict().items() if ".mlp." not in k}
    moe.load_state_dict(state, strict=False)
    with torch.no_grad():
        for block_d, block_m in zip(dense.blocks, moe.blocks):
            block_m.mlp.w13[0].copy_(block_d.mlp.w13.weight)
            block_m.mlp.w2[0].copy_(block_d.mlp.w2.weight)
    idx = torch.randint(0, 37, (3, 16))
    with torch.no_grad():
        assert torch.equal(moe(idx), dense(idx))


def test_experts_are_fine_grained_and_the_active_count_is_the_dense_one():
    dense = GPT(BASE)
    moe = GPT(moe_cfg(moe_experts=8, moe_top_k=2, moe_every=2))
    assert [is_moe_block(moe.cfg, i) for i in range(2)] == [False, True] and moe.moe_layers == [1]
    layer = moe.blocks[1].mlp
    assert layer.hidden == BASE.hidden // 2  # width / k: a token's k experts hold the dense MLP's weights
    counts = moe.parameter_counts()
    router = 32 * 8
    assert counts["active"] == sum(p.numel() for p in dense.parameters()) + router
    assert counts["total"] == counts["active"] + 6 * (layer.w13[0].numel() + layer.w2[0].numel())


def test_moe_is_causal_in_evaluation():
    torch.manual_seed(1)
    model = GPT(moe_cfg()).eval()
    a = torch.randint(0, 37, (2, 16))
    b = a.clone()
    b[:, 9:] = torch.randint(0, 37, (2, 7))
    with torch.no_grad():
        la, lb = model(a), model(b)
    assert torch.allclose(la[:, :9], lb[:, :9], atol=1e-5)
    assert not torch.allclose(la[:, 9:], lb[:, 9:], atol=1e-3)


def test_cached_generation_equals_the_full_forward_pass():
    torch.manual_seed(2)
    model = GPT(moe_cfg()).eval()
    idx = torch.randint(0, 37, (1, 12))
    with torch.no_grad():
        full = model(idx)
        caches = [{} for _ in model.blocks]
        steps = [model(idx[:, t:t + 1], caches, start=t)[:, -1] for t in range(12)]
    assert torch.allclose(torch.stack(steps, 1), full, atol=1e-5)


def test_load_balancing_loss_of_a_uniform_router_is_one_and_the_gate_trains_the_router_at_k1():
    probs = torch.full((50, 8), 1 / 8)
    counts = torch.tensor([50.0, 0, 0, 0, 0, 0, 0, 0])  # whatever the ties chose
    assert float(load_balancing_loss(probs, counts)) == pytest.approx(1.0, abs=1e-6)
    # all tokens on one expert with all the probability: E * 1 * 1
    assert float(load_balancing_loss(torch.eye(8)[[0] * 50], counts)) == pytest.approx(8.0)
    layer = MoE(moe_cfg(moe_experts=4, moe_top_k=1))
    torch.nn.init.zeros_(layer.router.weight)
    x = torch.randn(2, 5, 32)
    layer(x)
    assert float(layer.stats[4]) == pytest.approx(1.0, abs=1e-6)  # the balance loss of the uniform router
    torch.nn.init.normal_(layer.router.weight)
    layer.w13.grad = None
    layer(x).sum().backward()  # k = 1: the softmax comes before the top-1, so the gate reaches the router
    assert layer.router.weight.grad is not None and layer.router.weight.grad.abs().sum() > 0


def test_the_training_loss_has_the_auxiliary_terms_and_the_report_has_not():
    from dla.train.tasks import LMTask

    torch.manual_seed(3)
    model = GPT(moe_cfg(moe_aux=0.5, moe_z=0.1)).train()
    x, y = torch.randint(0, 37, (4, 16)), torch.randint(0, 37, (4, 16))
    cfg = load_experiment("lab2-gpt-char", ["budget=smoke"]).train
    cfg.precision = "fp32"
    loss, stats = LMTask.step(None, model, (x, y), cfg, model, None)
    loss = loss.detach()
    with torch.no_grad():
        ce = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
    layers = [b.mlp for b in model.blocks]
    aux = sum(0.5 * m.stats[4] + 0.1 * m.stats[5] for m in layers)
    assert float(loss) == pytest.approx(float(ce + aux), rel=1e-5)
    assert float(stats["loss"] / stats["n"]) == pytest.approx(float(ce), rel=1e-5)


def test_routing_metrics_of_an_evaluation():
    torch.manual_seed(4)
    model = GPT(moe_cfg(moe_experts=4, moe_top_k=2)).eval()
    model.track_routing()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randint(0, 37, (2, 16)))
    m = model.routing_metrics()
    shares = [m[f"moe0_share{e}"] for e in range(4)]
    assert sum(shares) == pytest.approx(1.0) and m["moe0_max_load"] == pytest.approx(4 * max(shares))
    assert m["moe0_dead"] == sum(s < 0.25 / 4 for s in shares)
    assert 0 < m["moe0_entropy"] <= torch.log(torch.tensor(4.0)) + 1e-6
    assert {"moe1_balance_loss", "moe1_z_loss"} <= set(m) and model.routing is None


@pytest.mark.parametrize("override, key", [(["model.moe_experts=2", "model.moe_top_k=3"], "model.moe_top_k"),
                                           (["model.moe_experts=4", "model.moe_every=0"], "model.moe_every"),
                                           (["model.moe_experts=-1"], "model.moe_experts"),
                                           (["model.moe_experts=4", "model.moe_aux=-1"], "model.moe_aux")])
def test_bad_moe_settings_are_refused(override, key):
    with pytest.raises(ConfigError, match=key):
        load_experiment("lab2-gpt-char", override)


def test_moe_keys_on_another_model_are_unknown():
    with pytest.raises(ConfigError, match="unknown key model.moe_experts"):
        load_experiment("lab1-mlp", ["model.moe_experts=4"])


@pytest.mark.slow
def test_a_moe_run_logs_routing_and_plots_it(tmp_path):
    need(SHARED / "inferno", "the shared Inferno text")
    root = tmp_path / "data"
    import_inferno(SHARED / "inferno", root)
    cfg = load_experiment("lab2-gpt-char", ["budget=smoke", "track.tracker=none", "data.download=false",
                                            "model.moe_experts=4", "model.moe_top_k=2", "model.n_layer=2", "train.max_steps=20",
                                            "train.eval_every=10"])
    run = experiment.train(cfg, root, run_path=tmp_path / "run")
    history, summary = run.read_metrics(), run.read_summary()
    assert len(history) == 2 and all(sum(r[f"val_moe1_share{e}"] for e in range(4)) == pytest.approx(1) for r in history)
    assert summary["params_active"] < summary["params_total"] == summary["params"]
    assert (run.path / "plots" / "routing.png").is_file()
    assert main(["generate", str(run.path), "--max-new-tokens", "30", "--seed", "1"]) == 0  # dla generate on the run


# ------------------------------------------------------------------------------------------ Mixture-of-Depths


def mod_cfg(**kw) -> GPTConfig:
    return dataclasses.replace(BASE, **{"mod_capacity": 0.25, "mod_every": 1, **kw})


def test_mod_at_capacity_one_is_exactly_the_dense_model():
    torch.manual_seed(5)
    dense = GPT(BASE).eval()
    full = GPT(mod_cfg(mod_capacity=1.0)).eval()
    full.load_state_dict(dense.state_dict())
    idx = torch.randint(0, 37, (2, 16))
    with torch.no_grad():
        assert torch.equal(full(idx), dense(idx))
    assert full.mod_layers == []


def test_mod_top_k_routes_capacity_tokens_and_the_rest_pass_unchanged():
    from dla.models.gpt import DepthRouted

    torch.manual_seed(6)
    model = GPT(mod_cfg(n_layer=1)).train()
    layer = model.blocks[0]
    assert isinstance(layer, DepthRouted)
    x = torch.randn(2, 16, 32)
    out = layer(x, model.cos[:16], model.sin[:16])
    chosen = layer.topk_mask(layer.scores(x))
    assert chosen.sum(1).tolist() == [4, 4]  # 0.25 x 16 per sequence
    assert torch.equal(out[~chosen], x[~chosen]) and not torch.allclose(out[chosen], x[chosen])
    # the chosen tokens see each other causally, at their original positions: the gathered block by hand
    rows = chosen[0].nonzero()[:, 0]
    ys = layer.block(x[:1, rows], model.cos[rows], model.sin[rows])
    gate = torch.sigmoid(layer.scores(x)[0, rows])[:, None]
    assert torch.allclose(out[0, rows], x[0, rows] + gate * (ys[0] - x[0, rows]), atol=1e-6)
    out.sum().backward()
    assert layer.router.weight.grad.abs().sum() > 0  # through sigmoid(r)


def test_mod_is_causal_in_evaluation_and_its_cached_generation_equals_the_full_pass():
    torch.manual_seed(7)
    model = GPT(mod_cfg(n_layer=3, mod_every=1)).eval()
    with torch.no_grad():
        for m in model.blocks:  # routers that route some tokens and skip others
            torch.nn.init.normal_(m.router.weight, std=0.5)
    a = torch.randint(0, 37, (2, 16))
    b = a.clone()
    b[:, 9:] = torch.randint(0, 37, (2, 7))
    with torch.no_grad():
        la, lb = model(a), model(b)
        routed = model.blocks[0].scores(model.embed(a)) > 0
    assert 0 < routed.float().mean() < 1
    assert torch.allclose(la[:, :9], lb[:, :9], atol=1e-5)
    idx = a[:1, :12]
    with torch.no_grad():
        full = model(idx)
        caches = [{} for _ in model.blocks]
        prefill = model(idx[:, :5], caches)  # a prompt of 5, then one token at a time
        steps = [model(idx[:, t:t + 1], caches, start=t)[:, -1] for t in range(5, 12)]
    assert torch.allclose(prefill, full[:, :5], atol=1e-5)
    assert torch.allclose(torch.stack(steps, 1), full[:, 5:], atol=1e-5)


def test_mod_logs_routing_and_a_non_causal_loss_apart():
    torch.manual_seed(8)
    model = GPT(mod_cfg(n_layer=2, mod_every=2)).eval()
    assert model.mod_layers == [1]
    model.track_routing()
    with torch.no_grad():
        model(torch.randint(0, 37, (2, 16)))
    m = model.routing_metrics()
    assert 0 <= m["mod1_routed_share"] <= 1 and 0 <= m["mod1_topk_agreement"] <= 1 and m["mod1_router_bce"] > 0
    model.train()
    x, y = torch.randint(0, 37, (2, 16)), torch.randint(0, 37, (2, 16))
    with torch.no_grad():  # training routes by top-k; the router's BCE has the top-k choice as its target
        logits = model(x)
        layer = model.blocks[1]
        r = layer.scores(model.blocks[0](model.embed(x), model.cos[:16], model.sin[:16]))
        expected = torch.nn.functional.binary_cross_entropy_with_logits(r, layer.topk_mask(r).float())
    assert float(layer.aux) == pytest.approx(0.01 * float(expected), rel=1e-5)
    assert float(model.aux_loss) == pytest.approx(float(layer.aux)) and logits.shape == (2, 16, 37)


@pytest.mark.parametrize("override, key", [(["model.mod_capacity=0"], "model.mod_capacity"),
                                           (["model.mod_capacity=1.5"], "model.mod_capacity"),
                                           (["model.mod_capacity=0.5", "model.mod_every=0"], "model.mod_every")])
def test_bad_mod_settings_are_refused(override, key):
    with pytest.raises(ConfigError, match=key):
        load_experiment("lab2-gpt-char", override)


@pytest.mark.slow
def test_a_mod_run_reports_the_causal_loss_and_the_non_causal_one_apart(tmp_path, capsys):
    need(SHARED / "inferno", "the shared Inferno text")
    root = tmp_path / "data"
    import_inferno(SHARED / "inferno", root)
    cfg = load_experiment("lab2-gpt-char", ["budget=smoke", "track.tracker=none", "data.download=false",
                                            "model.mod_capacity=0.5", "model.n_layer=2", "train.max_steps=20",
                                            "train.eval_every=10"])
    run = experiment.train(cfg, root, run_path=tmp_path / "run")
    last = run.read_metrics()[-1]
    assert {"val_loss", "val_loss_topk_noncausal", "val_mod1_routed_share", "val_mod1_topk_agreement"} <= set(last)
    assert run.read_summary()["test_loss"] > 0 and (run.path / "sample.txt").read_text()
    capsys.readouterr()
    assert main(["generate", str(run.path), "--max-new-tokens", "30", "--seed", "1"]) == 0  # cached, causal routing
    assert len(capsys.readouterr().out) > 30

