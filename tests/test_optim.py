"""Optimisers and augmentation of the training recipes: decay groups, Lion, Muon + AdamW, AutoAugment."""

import pytest
import torch
from torch import nn

from dla.config import OptimConfig, load_experiment
from dla.data.batches import augment
from dla.device import seed_process
from dla.errors import ConfigError
from dla.models import build_model
from dla.models.cnn import CNNConfig
from dla.models.gpt import GPT, GPTConfig
from dla.models.mlp import MLPConfig
from dla.train.optim import build_optimizer, hidden_matrices


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
