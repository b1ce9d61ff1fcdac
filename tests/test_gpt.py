"""The LLaMA-style GPT (Lab 2.1 model): RoPE, KV cache, GQA, causality, learning, sampling."""

import pytest
import torch
import torch.nn.functional as F

from dla.errors import ConfigError
from dla.models.gpt import GPT, GPTConfig, rope_rotate, rope_tables, rope_tables2, sample_next


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The rotary embedding as the model computed it before `rope_rotate` (x in (B, H, T, D), tables
    (T, D/2)): the reference the fused rotation must equal to the bit."""
    x1, x2 = x.float().chunk(2, dim=-1)
    cos, sin = cos[None, None], sin[None, None]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


def tiny(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**{"vocab_size": 50, "block_size": 32, "n_layer": 2, "n_head": 4, "n_embd": 32, **kw})).eval()


def test_rope_scores_depend_only_on_relative_position():
    cos, sin = rope_tables(16, 64, 10000.0)
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, 16, generator=gen), torch.randn(1, 1, 1, 16, generator=gen)

    def score(i, j):
        return float((apply_rope(q, cos[i : i + 1], sin[i : i + 1]) * apply_rope(k, cos[j : j + 1], sin[j : j + 1])).sum())

    assert score(5, 2) == pytest.approx(score(25, 22), abs=1e-4)
    assert score(5, 2) != pytest.approx(score(5, 4), abs=1e-2)


def test_kv_cache_generation_equals_full_recomputation():
    model = tiny()
    prompt = torch.tensor([1, 2, 3, 4])
    cached = list(model.generate(prompt, 40, temperature=0))  # runs past block_size: the window slides
    full = list(model.generate(prompt, 40, temperature=0, use_cache=False))
    assert cached == full and len(cached) == 40


def test_gqa_equals_multi_head_attention_with_shared_key_value_heads():
    """2 K/V heads shared by 4 query heads = plain MHA whose K/V heads 0,1 and 2,3 are copies."""
    grouped, mha = tiny(n_kv_heads=2), tiny(n_kv_heads=None)
    d, e = 8, 32
    assert grouped.blocks[0].attn.wqkv.out_features == (4 + 2 * 2) * d
    state = grouped.state_dict()
    for i in range(2):
        w = state[f"blocks.{i}.attn.wqkv.weight"]  # rows: q (4 heads) | k (2 heads) | v (2 heads)
        q, k, v = w[: 4 * d], w[4 * d : 6 * d], w[6 * d :]
        expand = lambda m: m.view(2, d, e).repeat_interleave(2, dim=0).reshape(4 * d, e)  # noqa: E731
        state[f"blocks.{i}.attn.wqkv.weight"] = torch.cat([q, expand(k), expand(v)])
    mha.load_state_dict(state)
    idx = torch.randint(0, 50, (2, 10))
    assert torch.allclose(grouped(idx), mha(idx), atol=1e-5)
    assert sum(p.numel() for p in grouped.parameters()) < sum(p.numel() for p in mha.parameters())


def test_causal_mask_future_tokens_do_not_change_past_logits():
    model = tiny()
    idx = torch.randint(0, 50, (1, 12))
    changed = idx.clone()
    changed[0, 8:] = (changed[0, 8:] + 7) % 50
    assert torch.allclose(model(idx)[0, :8], model(changed)[0, :8], atol=1e-6)
    assert not torch.allclose(model(idx)[0, 8:], model(changed)[0, 8:])


def test_tiny_model_overfits_a_short_string():
    text = b"nel mezzo del cammin di nostra vita"
    ids = torch.tensor(list(text)).view(1, -1)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=256, block_size=64, n_layer=2, n_head=2, n_embd=64))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        loss = F.cross_entropy(model(ids[:, :-1])[0], ids[0, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]  # memorised (a wide margin: about 0.01 of the first loss here)


def test_head_is_tied_and_config_is_checked():
    model = tiny()
    assert model.head.weight is model.embed.weight
    with pytest.raises(ConfigError, match="divisible"):
        GPTConfig(n_embd=30, n_head=4).validate()
    with pytest.raises(ConfigError, match="multiple of model.n_kv_heads"):
        GPTConfig(n_head=4, n_kv_heads=3).validate()


def test_sampling_respects_seed_top_k_and_top_p():
    model = tiny()
    prompt = torch.tensor([1, 2, 3])
    a = list(model.generate(prompt, 20, temperature=1.0, seed=7))
    assert a == list(model.generate(prompt, 20, temperature=1.0, seed=7))
    assert a != list(model.generate(prompt, 20, temperature=1.0, seed=8))
    logits = torch.tensor([3.0, 2.0, 1.0, 0.0, -1.0])
    gen = torch.Generator().manual_seed(0)
    draws = {int(sample_next(logits, 1.0, 2, None, gen)) for _ in range(200)}
    assert draws == {0, 1}
    # top_p 0.6: softmax is [0.64, 0.23, ...], so only the first token survives
    assert {int(sample_next(logits, 1.0, None, 0.6, gen)) for _ in range(100)} == {0}
    assert {int(sample_next(logits, 1.0, None, 0.8, gen)) for _ in range(300)} == {0, 1}


def test_fused_rope_equals_the_reference_rotation_to_the_bit():
    torch.manual_seed(0)
    cos, sin = rope_tables(16, 12, 10000.0)
    cos2, sin2 = rope_tables2(cos, sin)
    x = torch.randn(3, 12, 5, 16)  # (B, T, H, D)
    reference = apply_rope(x.transpose(1, 2), cos, sin).transpose(1, 2)  # (B, H, T, D) layout
    assert torch.equal(rope_rotate(x, cos2, sin2), reference)
    xb = x.bfloat16()
    assert torch.equal(rope_rotate(xb, cos2, sin2), apply_rope(xb.transpose(1, 2), cos, sin).transpose(1, 2))


def test_last_only_gives_the_full_forward_last_position():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=30, block_size=16, n_layer=3, n_head=4, n_kv_heads=2, n_embd=32)).eval()
    idx = torch.randint(0, 30, (5, 16))
    with torch.no_grad():
        full = model(idx)[:, -1]
        last = model(idx, last_only=True)
    assert last.shape == (5, 1, 30)
    torch.testing.assert_close(last[:, 0], full, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_regional_compilation_compiles_one_block_once_and_generation_stays_eager(tmp_path, monkeypatch):
    from torch._dynamo.utils import counters

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=30, block_size=16, n_layer=3, n_head=2, n_embd=32)
    model, reference = GPT(cfg), GPT(cfg)
    reference.load_state_dict(model.state_dict())
    model.compile_blocks()
    x = torch.randint(0, 30, (4, 16))
    for _ in range(2):
        model(x).sum().backward()
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), reference.eval()(x), rtol=1e-5, atol=1e-5)
    assert counters["stats"]["unique_graphs"] == 2  # training and evaluation, shared by the 3 blocks
    with torch.no_grad():
        ours = list(model.generate(x[0, :3], 20, seed=0))
    assert ours == list(reference.generate(x[0, :3], 20, seed=0))
    assert counters["stats"]["unique_graphs"] == 2  # generation ran the blocks eagerly
    torch._dynamo.reset()
