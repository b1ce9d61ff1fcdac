"""Optimisers and augmentation of the training recipes: decay groups, Lion, Muon + AdamW, AutoAugment."""

from typing import get_args, get_type_hints

import pytest
import torch
from torch import nn

from dla.config import OptimConfig, SchedConfig, load_experiment
from dla.data.batches import augment
from dla.device import seed_process
from dla.errors import ConfigError
from dla.models import build_model
from dla.models.cnn import CNNConfig
from dla.models.gpt import GPT, GPTConfig
from dla.models.mlp import MLPConfig
from dla.train.optim import build_optimizer, build_scheduler, hidden_matrices


def decayed_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> set[str]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}


def tiny_gpt() -> GPT:
    return GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16))


def tiny_encoder() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=32, num_labels=4)
    return transformers.BertForSequenceClassification(cfg)


@pytest.mark.parametrize("family", ["mlp", "cnn", "gpt", "encoder"])
def test_weight_decay_only_on_matrices_and_kernels(family):
    model = {
        "mlp": lambda: build_model(MLPConfig(hidden=[8]), (1, 4, 4), 3, (0.5,), (0.5,)),
        "cnn": lambda: build_model(CNNConfig(depth=9, width=4, fc_width=8), (3, 32, 32), 10, (0.5,) * 3, (0.5,) * 3),
        "gpt": tiny_gpt,
        "encoder": tiny_encoder,
    }[family]()
    opt = build_optimizer(model, OptimConfig(name="adamw", weight_decay=0.1))
    decayed = decayed_names(model, opt)
    embeddings = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Embedding)}
    for name, p in model.named_parameters():
        assert (name in decayed) == (p.ndim >= 2 and name not in embeddings), name
    grouped = [p for g in opt.param_groups for p in g["params"]]
    assert len(grouped) == len(set(map(id, grouped))) == len(list(model.parameters()))  # each once
    if family == "gpt":  # the head is tied to the embedding: neither is decayed
        assert "embed.weight" not in decayed and model.head.weight is model.embed.weight
    if family == "encoder":
        assert not any("LayerNorm" in n or n.endswith(".bias") for n in decayed)
        assert "classifier.weight" in decayed
    plain = build_optimizer(model, OptimConfig(name="adam"))  # no decay: one group of every parameter, fused
    assert len(plain.param_groups) == 1 and plain.param_groups[0]["fused"]
    assert {id(p) for p in plain.param_groups[0]["params"]} == {id(p) for p in model.parameters()}


def test_lion_follows_the_papers_update_rule():
    w = nn.Parameter(torch.randn(5, 3, generator=torch.Generator().manual_seed(0)))
    target = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    lr, (b1, b2), wd = 0.01, (0.9, 0.99), 0.1
    model = nn.Linear(3, 5, bias=False)
    model.weight = w
    opt = build_optimizer(model, OptimConfig(name="lion", lr=lr, weight_decay=wd))
    ref, m = w.detach().clone(), torch.zeros_like(w)
    for _ in range(4):
        loss = ((w - target) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        g = w.grad.detach().clone()
        opt.step()
        # Chen et al. 2023, Algorithm 1 (decoupled weight decay)
        update = torch.sign(b1 * m + (1 - b1) * g)
        ref = ref - lr * (update + wd * ref)
        m = b2 * m + (1 - b2) * g
        assert torch.allclose(w.detach(), ref, atol=1e-6)
    start = ((torch.randn(5, 3, generator=torch.Generator().manual_seed(0)) - target) ** 2).sum()
    assert ((w - target) ** 2).sum() < start  # and it went downhill


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest():
    model = tiny_gpt()
    opt = build_optimizer(model, OptimConfig(name="muon", lr=1e-3, muon_lr=0.02))
    muon, adamw = opt.parts
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    on_muon = {names[id(p)] for g in muon.param_groups for p in g["params"]}
    on_adamw = {names[id(p)] for g in adamw.param_groups for p in g["params"]}
    assert on_muon == {n for n, p in model.named_parameters() if p.ndim == 2 and n != "embed.weight"}
    assert "embed.weight" in on_adamw and not on_muon & on_adamw  # the tied embedding/head stays on AdamW
    assert on_muon | on_adamw == set(names.values())
    assert [g["lr"] for g in opt.param_groups] == [0.02] + [1e-3] * len(adamw.param_groups)
    # it trains, and a schedule and a checkpoint see both parts
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5)
    x = torch.randint(0, 50, (4, 16))
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(model(x)[:, :-1].flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert [g["lr"] for g in opt.param_groups] == [0.01] + [5e-4] * len(adamw.param_groups)
    state = opt.state_dict()
    fresh = build_optimizer(model, OptimConfig(name="muon", lr=1e-3, muon_lr=0.02))
    fresh.load_state_dict(state)
    assert [g["lr"] for g in fresh.param_groups] == [0.01] + [5e-4] * len(adamw.param_groups)
    assert torch.equal(fresh.parts[0].state[model.blocks[0].attn.wqkv.weight]["momentum_buffer"],
                       muon.state[model.blocks[0].attn.wqkv.weight]["momentum_buffer"])


def test_muon_needs_hidden_matrices_and_the_optimiser_names_are_checked():
    with pytest.raises(ConfigError, match="no hidden 2-D weight matrices"):
        build_optimizer(nn.Sequential(nn.Conv2d(1, 2, 3)), OptimConfig(name="muon"))
    assert hidden_matrices(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))) != []
    with pytest.raises(ConfigError, match="optim.name"):
        load_experiment("lab1-mlp", ["optim.name=lamb"])
    with pytest.raises(ConfigError, match="optim.betas"):
        load_experiment("lab1-mlp", ["optim.betas=[0.9,1.5]"])


OPTIMISERS = get_args(get_type_hints(OptimConfig)["name"])
SCHEDULES = get_args(get_type_hints(SchedConfig)["name"])


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("optimiser", OPTIMISERS)
def test_every_optimiser_trains_under_every_schedule(optimiser, schedule):
    """Two steps of a tiny MLP for each pair (Muon under one-cycle raised in torch's OneCycleLR), and the
    schedule's state survives a checkpoint."""
    torch.manual_seed(0)
    model = build_model(MLPConfig(hidden=[8]), (1, 4, 4), 3, (0.5,), (0.5,))
    opt = build_optimizer(model, OptimConfig(name=optimiser, lr=1e-2))
    sched = build_scheduler(opt, SchedConfig(name=schedule), total_steps=2)
    x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 3, (8,))
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(g["lr"] >= 0 for g in opt.param_groups)
    build_scheduler(build_optimizer(model, OptimConfig(name=optimiser, lr=1e-2)), SchedConfig(name=schedule),
                    total_steps=2).load_state_dict(sched.state_dict())


def test_one_cycle_leaves_sgd_without_momentum_without_momentum():
    model = nn.Linear(3, 2)
    opt = build_optimizer(model, OptimConfig(name="sgd", momentum=0.0))
    build_scheduler(opt, SchedConfig(name="onecycle"), total_steps=20)
    assert all(g["momentum"] == 0 for g in opt.param_groups)


@pytest.mark.parametrize("total, warmup", [(10, 0.1), (5, 0.2), (2, 0.5), (20, 0.05)])
def test_one_cycle_with_a_warm_up_of_exactly_one_step(total, warmup):
    """torch's OneCycleLR divides by zero when the warm-up is one step long (e.g. lab1-mlp's 0.2 of 5 steps)."""
    opt = build_optimizer(nn.Linear(3, 2), OptimConfig(name="adamw", lr=1e-2))
    sched = build_scheduler(opt, SchedConfig(name="onecycle", warmup_frac=warmup), total_steps=total)
    for _ in range(total):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] < 1e-2


@pytest.mark.parametrize("override, name", [
    ("optim.betas=[0.8,0.9]", "sgd"), ("optim.momentum=0.5", "adamw"), ("optim.nesterov=true", "adam"),
    ("optim.muon_lr=0.05", "lion"), ("optim.muon_momentum=0.9", "sgd"),
])
def test_a_setting_the_optimiser_ignores_is_refused(override, name):
    with pytest.raises(ConfigError, match=rf"{override.split('=')[0]}=.* applies to optim.name=.*not to optim.name={name}"):
        load_experiment("lab1-mlp", [f"optim.name={name}", override])
    load_experiment("lab1-mlp", ["optim.name=muon", "optim.betas=[0.8,0.9]"])  # Muon's AdamW part reads them


def test_autoaugment_keeps_dtype_shape_range_and_follows_the_seed():
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    a = augment(x, "autoaugment", torch.Generator().manual_seed(1))
    b = augment(x, "autoaugment", torch.Generator().manual_seed(1))
    c = augment(x, "autoaugment", torch.Generator().manual_seed(2))
    assert a.dtype == torch.uint8 and a.shape == x.shape
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, x)
    state = torch.get_rng_state()
    augment(x, "autoaugment", torch.Generator().manual_seed(3))
    assert torch.equal(state, torch.get_rng_state())  # the global stream (dropout masks) is untouched
    grey = augment(torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8), "autoaugment", torch.Generator())
    assert grey.shape == (4, 1, 28, 28) and grey.dtype == torch.uint8


def test_each_process_draws_its_own_dropout_masks():
    """Under torchrun, processes after the first reseed torch's global RNG: rank 0 draws the masks a
    single process would, the others draw their own (they used to draw the same ones as rank 0)."""
    def masks(rank: int) -> torch.Tensor:
        torch.manual_seed(0)
        seed_process(0, rank, step=0)
        return torch.nn.functional.dropout(torch.ones(1000), 0.5) > 0

    torch.manual_seed(0)
    single = torch.nn.functional.dropout(torch.ones(1000), 0.5) > 0
    assert torch.equal(masks(0), single)
    assert not torch.equal(masks(1), masks(0)) and not torch.equal(masks(2), masks(1))
    assert torch.equal(masks(1), masks(1))
