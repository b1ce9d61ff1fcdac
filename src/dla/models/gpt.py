"""A LLaMA-style GPT in one file (Lab 2.1).

Token embedding, then `n_layer` pre-norm blocks of
    x + Attention(RMSNorm(x))   causal self-attention, rotary positions (RoPE), grouped-query heads
    x + SwiGLU(RMSNorm(x))      W2(silu(W1 x) * W3 x)
then a final RMSNorm and an LM head tied to the embedding. Attention runs through
`scaled_dot_product_attention`; generation keeps a KV cache so each new token costs one position.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dla.errors import ConfigError
from dla.models.registry import register_model


@dataclass
class GPTConfig:
    name: str = "gpt"
    vocab_size: int | None = None  # None: the tokenizer's (a value that differs from it is an error)
    block_size: int | None = None  # longest context; None: data.block_size (it may be larger, never smaller)
    n_layer: int = 4
    n_head: int = 4
    n_kv_heads: int | None = None  # grouped-query attention; None: one K/V head per query head
    n_embd: int = 128
    ffn_hidden: int | None = None  # SwiGLU width; None: about 8/3 * n_embd, rounded up to a multiple of 32
    dropout: float = 0.0
    rope_base: float = 10000.0
    # Mixture-of-Experts: the MLP of every moe_every-th block becomes moe_experts fine-grained SwiGLU experts
    # (hidden / moe_top_k wide each, so a token's active MLP weights and FLOPs equal the dense MLP's)
    moe_experts: int = 0  # 0: dense
    moe_top_k: int = 2  # experts per token (token-choice, dropless)
    moe_every: int = 2  # blocks 2, 4, ... (with 1: every block)
    moe_aux: float = 0.01  # weight of the load-balancing loss E * sum_i f_i * P_i (training loss only)
    moe_z: float = 0.001  # weight of the router z-loss mean(logsumexp(logits)^2) (training loss only)
    # Mixture-of-Depths: in every mod_every-th block a scalar router picks the top mod_capacity x T tokens of
    # each sequence to go through the block (training); in evaluation and generation, a token goes through
    # when sigmoid(router) > 0.5, a causal decision the router learns with a BCE loss on the top-k choice
    mod_capacity: float | None = None  # None: off; 1.0: every token, the block as a dense one
    mod_every: int = 2
    mod_aux: float = 0.01  # weight of the router's BCE loss (training loss only)

    def validate(self) -> None:
        if self.moe_experts < 0:
            raise ConfigError(f"model.moe_experts: a number of experts >= 0 (0: dense), got {self.moe_experts}")
        if self.moe_every < 1:
            raise ConfigError(f"model.moe_every: must be >= 1 (1: every block), got {self.moe_every}")
        if self.moe_experts and not 1 <= self.moe_top_k <= self.moe_experts:
            raise ConfigError(f"model.moe_top_k={self.moe_top_k}: must be between 1 and model.moe_experts="
                              f"{self.moe_experts}")
        if self.mod_capacity is not None and not 0 < self.mod_capacity <= 1:
            raise ConfigError(f"model.mod_capacity: the share of tokens a routed block takes, in (0, 1], got "
                              f"{self.mod_capacity}")
        if self.mod_every < 1:
            raise ConfigError(f"model.mod_every: must be >= 1 (1: every block), got {self.mod_every}")
        if self.mod_aux < 0:
            raise ConfigError(f"model.mod_aux: a loss weight >= 0, got {self.mod_aux}")
        if self.moe_aux < 0 or self.moe_z < 0:
            raise ConfigError(f"model.moe_aux and model.moe_z: loss weights >= 0, got {self.moe_aux}, {self.moe_z}")
        if self.moe_experts and self.hidden // self.moe_top_k < 1:
            raise ConfigError(f"model.moe_top_k={self.moe_top_k} leaves the experts no width (MLP width {self.hidden})")
        kv = self.n_kv_heads or self.n_head
        if self.n_embd % self.n_head:
            raise ConfigError(f"model.n_embd={self.n_embd} must be divisible by model.n_head={self.n_head}")
        if self.n_head % kv:
            raise ConfigError(f"model.n_head={self.n_head} must be a multiple of model.n_kv_heads={kv}")
        if (self.n_embd // self.n_head) % 2:
            raise ConfigError("model: the head size n_embd / n_head must be even for rotary embeddings")

    @property
    def hidden(self) -> int:
        return self.ffn_hidden or 32 * math.ceil(8 * self.n_embd / 3 / 32)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def rope_tables(head_dim: int, length: int, base: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape (length, head_dim / 2) for positions 0..length-1."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim)
    angles = torch.outer(torch.arange(length, device=device).float(), inv_freq)
    return angles.cos(), angles.sin()


def rope_rotate(x: torch.Tensor, cos2: torch.Tensor, sin2: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., i], x[..., i + D/2]) of x (B, T, H, D) by position-dependent angles, with
    tables of shape (T, 1, D): cos2 = [cos, cos] and sin2 = [-sin, sin] (`rope_tables2`). The halves
    become x1*cos - x2*sin and x2*cos + x1*sin, in three kernels.

    The half-split pairing (rather than adjacent pairs) needs no interleaving; it is the same
    rotary embedding up to a fixed permutation of the head dimensions, which the projections absorb.
    """
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    return (xf * cos2 + torch.cat([x2, x1], dim=-1) * sin2).type_as(x)


def rope_tables2(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`rope_rotate`'s tables, (T, 1, D), from `rope_tables`' (T, D/2)."""
    return torch.cat([cos, cos], -1)[:, None], torch.cat([-sin, sin], -1)[:, None]


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.n_kv = cfg.n_head, cfg.n_kv_heads or cfg.n_head
        self.head_dim = cfg.n_embd // cfg.n_head
        # queries, keys and values in one matmul: n_head query heads, n_kv key and value heads
        self.wqkv = nn.Linear(cfg.n_embd, (cfg.n_head + 2 * self.n_kv) * self.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_head * self.head_dim, cfg.n_embd, bias=False)

    def forward(self, x, cos, sin, cache: dict | None = None, last_only: bool = False,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, C) with rope tables (T, 1, D) (`rope_tables2`), or (B, T, 1, D) for positions of their own
        per sequence; `last_only`: the output at the last position alone (B, 1, C), with keys and values from
        every position; `mask` (B, 1, T, T), True where a query may attend a key, replaces the causal mask."""
        b, t, _ = x.shape
        d, nq, nkv = self.head_dim, self.n_head, self.n_kv
        qkv = self.wqkv(x).view(b, t, nq + 2 * nkv, d)
        # queries and keys are rotated together in one pass, in (B, T, H, D) layout
        qk, v = rope_rotate(qkv[:, :, : nq + nkv], cos, sin), qkv[:, :, nq + nkv :]
        q, k = qk[:, :, :nq].transpose(1, 2), qk[:, :, nq:].transpose(1, 2)
        v = v.transpose(1, 2)
        if last_only:
            q = q[:, :, -1:]
        if cache is not None:  # append this step's keys and values to those of earlier positions
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
            cache["k"], cache["v"] = k, v
        tq = q.shape[2]
        causal = tq > 1 and k.shape[2] == tq  # with a cache, a single new query may see every cached key
        if tq > 1 and not causal:
            raise ValueError("prefill with a non-empty cache is not supported; feed one token at a time")
        dtype = q.dtype
        cpu_bf16 = x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
        # PyTorch's CPU flash-attention backward is ~8x slower in bf16 than in fp32 at these sizes,
        # so on the CPU attention runs in fp32 (autocast would cast it back to bf16: turn it off here).
        with torch.autocast("cpu", enabled=False) if cpu_bf16 else contextlib.nullcontext():
            if cpu_bf16:
                q, k, v = q.float(), k.float(), v.float()
            # No dropout on the attention probabilities (LLaMA has none; on the CPU it would also
            # force SDPA off its fused kernel, 2.5x slower): `dropout` acts on the residual branches.
            if mask is not None:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=nkv != nq)
            else:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=nkv != nq)
        return self.wo(y.to(dtype).transpose(1, 2).reshape(b, tq, -1))


class SwiGLU(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.w13 = nn.Linear(cfg.n_embd, 2 * cfg.hidden, bias=False)  # W1 and W3 in one matmul
        self.w2 = nn.Linear(cfg.hidden, cfg.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


class MoE(nn.Module):
    """Mixture-of-Experts MLP: `moe_experts` SwiGLU experts of width hidden / k, each token sent to its top k.

    The router is a bias-free linear layer computed in fp32 (autocast off); its softmax over all experts
    comes before the top-k, whose k weights are renormalised, so even with k = 1 the gate carries a
    gradient to the router. Routing is dropless: every token reaches its k experts, in training and in
    evaluation. `forward` leaves the auxiliary loss (weighted load-balancing and z-losses) in `aux` and
    the routing statistics of the pass in `stats` (tokens per expert, then the two losses and the mean
    routing entropy), for the model to collect.
    """

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_experts, self.top_k = cfg.moe_experts, cfg.moe_top_k
        self.hidden = cfg.hidden // cfg.moe_top_k
        self.aux_weight, self.z_weight = cfg.moe_aux, cfg.moe_z
        self.router = nn.Linear(cfg.n_embd, cfg.moe_experts, bias=False)
        self.w13 = nn.Parameter(torch.empty(cfg.moe_experts, 2 * self.hidden, cfg.n_embd))  # W1 and W3 of each expert
        self.w2 = nn.Parameter(torch.empty(cfg.moe_experts, cfg.n_embd, self.hidden))
        nn.init.normal_(self.w13, std=0.02)
        nn.init.normal_(self.w2, std=0.02)
        self.aux: torch.Tensor | None = None
        self.stats: torch.Tensor | None = None

    def route(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Router logits (fp32), probabilities over all experts, and each token's k experts and weights."""
        with torch.autocast(flat.device.type, enabled=False):
            logits = F.linear(flat.float(), self.router.weight.float())
        probs = logits.softmax(-1)
        weights, experts = probs.topk(self.top_k, dim=-1)
        return logits, probs, experts, weights / weights.sum(-1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        logits, probs, experts, weights = self.route(flat)
        out = torch.zeros_like(flat)
        for e in range(self.n_experts):  # an expert with no token still runs (on 0 rows): under DDP every
            rows, slot = (experts == e).nonzero(as_tuple=True)  # weight must get a gradient, zero or not
            gate, up = F.linear(flat[rows], self.w13[e]).chunk(2, dim=-1)
            y = F.linear(F.silu(gate) * up, self.w2[e])
            out.index_add_(0, rows, (y * weights[rows, slot, None]).to(out.dtype))
        counts = torch.bincount(experts.flatten(), minlength=self.n_experts).float()
        balance, z = load_balancing_loss(probs, counts), logits.logsumexp(-1).square().mean()
        self.aux = self.aux_weight * balance + self.z_weight * z
        entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1).mean()
        self.stats = torch.cat([counts, torch.stack([balance, z, entropy]).float()]).detach()
        return out.view(shape)


def load_balancing_loss(probs: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """E * sum_i f_i * P_i: f_i the share of the token-to-expert assignments that went to expert i, P_i the mean
    of expert i's probability over all experts' softmax (not the renormalised top-k). 1 for a uniform router."""
    f = counts / counts.sum()
    return probs.shape[-1] * (f * probs.mean(0)).sum()


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, moe: bool = False):
        super().__init__()
        self.norm1, self.attn = RMSNorm(cfg.n_embd), Attention(cfg)
        self.norm2, self.mlp = RMSNorm(cfg.n_embd), MoE(cfg) if moe else SwiGLU(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin, cache=None, last_only: bool = False, mask=None):
        """`last_only`: the block's output at the last position alone (the last block of a last-position
        score, where the other positions' outputs would be thrown away)."""
        h = self.attn(self.norm1(x), cos, sin, cache, last_only, mask)
        x = (x[:, -1:] if last_only else x) + self.drop(h)
        return x + self.drop(self.mlp(self.norm2(x)))


class DepthRouted(nn.Module):
    """Mixture-of-Depths around a block: a scalar router score r per token decides which tokens go through it;
    the others pass unchanged. A routed token's update is scaled by sigmoid(r), so the router gets a gradient.

    Training (`mode="topk"`): the top `capacity` x T tokens of each sequence by r go through, gathered in their
    original order with their original rotary positions, attending causally to each other. That choice looks
    at future tokens, so evaluation and generation (`mode="causal"`) route a token when sigmoid(r) > 0.5; the
    router learns that decision from a BCE loss whose target is the top-k choice (`aux`). With a KV cache the
    block keeps keys and values of routed tokens only. `stats`: routed share, agreement with top-k, BCE.
    """

    def __init__(self, cfg: GPTConfig, block: Block):
        super().__init__()
        self.block, self.capacity, self.aux_weight = block, cfg.mod_capacity, cfg.mod_aux
        self.router = nn.Linear(cfg.n_embd, 1, bias=False)
        self.mode = "topk"  # the GPT sets it: "topk" in training, "causal" otherwise
        self.aux: torch.Tensor | None = None
        self.stats: torch.Tensor | None = None

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return F.linear(x.float(), self.router.weight.float()).squeeze(-1)  # (B, T), fp32

    def topk_mask(self, r: torch.Tensor) -> torch.Tensor:
        k = max(1, int(self.capacity * r.shape[1]))
        return torch.zeros_like(r, dtype=torch.bool).scatter_(1, r.topk(k, dim=1).indices, True)

    def forward(self, x, cos, sin, cache=None, last_only: bool = False):
        r = self.scores(x)
        if cache is not None and "k" in cache or cache is not None and x.shape[1] == 1:  # generation, one token
            return self._step(x, r, cos, sin, cache)
        chosen = self.topk_mask(r)
        bce = F.binary_cross_entropy_with_logits(r, chosen.float())
        if self.mode == "topk":
            out = self._topk(x, r, chosen, cos, sin)
            routed = chosen
        else:
            routed = r > 0  # sigmoid(r) > 0.5
            out = self._masked(x, r, routed, cos, sin, cache)
        self.aux = self.aux_weight * bce
        self.stats = torch.stack([routed.float().mean(), (routed == chosen).float().mean(), bce]).detach()
        return out[:, -1:] if last_only else out

    def _topk(self, x, r, chosen, cos, sin):
        b, t, c = x.shape
        rows = chosen.nonzero()[:, 1].view(b, -1)  # each sequence's chosen positions, in order
        xs = x.gather(1, rows[..., None].expand(-1, -1, c))
        ys = self.block(xs, cos.squeeze(1)[rows][:, :, None], sin.squeeze(1)[rows][:, :, None])
        gate = torch.sigmoid(r.gather(1, rows))[..., None].to(xs.dtype)
        return x.scatter_add(1, rows[..., None].expand(-1, -1, c), (gate * (ys - xs)).to(x.dtype))

    def _masked(self, x, r, routed, cos, sin, cache):
        """Every position computed, routed keys only (and each query its own, so no row is empty); the
        updates of unrouted tokens are dropped."""
        t = x.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        mask = (causal & routed[:, None, :]) | torch.eye(t, dtype=torch.bool, device=x.device)
        inner = {} if cache is not None else None
        y = self.block(x, cos, sin, inner, mask=mask[:, None])
        if cache is not None:  # the prompt of a generation: keep the routed tokens' keys and values
            if x.shape[0] != 1:
                raise ValueError("a Mixture-of-Depths KV cache holds one sequence")
            keep = routed[0]
            cache["k"], cache["v"] = inner["k"][:, :, keep], inner["v"][:, :, keep]
        gate = torch.where(routed, torch.sigmoid(r), torch.zeros_like(r))[..., None]
        return x + (gate * (y - x)).to(x.dtype)

    def _step(self, x, r, cos, sin, cache):
        """One new token (B = 1): through the block, attending to the cached routed tokens, if routed."""
        if float(r) <= 0:
            return x
        if "k" not in cache or cache["k"].shape[2] == 0:
            cache.pop("k", None), cache.pop("v", None)
        y = self.block(x, cos, sin, cache)
        return x + (torch.sigmoid(r)[..., None] * (y - x)).to(x.dtype)


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        blocks = [Block(cfg, moe=is_moe_block(cfg, i)) for i in range(cfg.n_layer)]
        self.blocks = nn.ModuleList(DepthRouted(cfg, b) if is_mod_block(cfg, i) else b for i, b in enumerate(blocks))
        self.moe_layers = [i for i in range(cfg.n_layer) if is_moe_block(cfg, i)]
        self.mod_layers = [i for i in range(cfg.n_layer) if is_mod_block(cfg, i)]
        self.aux_loss: torch.Tensor | None = None  # the routed layers' auxiliary losses of the last forward pass
        self.routing: dict | None = None  # summed routing statistics, from `track_routing` to `routing_metrics`
        self.norm = RMSNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.head.weight = self.embed.weight  # tied
        cos2, sin2 = rope_tables2(*rope_tables(cfg.n_embd // cfg.n_head, cfg.block_size, cfg.rope_base))
        self.register_buffer("cos", cos2, persistent=False)
        self.register_buffer("sin", sin2, persistent=False)
        self.apply(self._init)
        for name, p in self.named_parameters():  # scaled init of residual projections (GPT-2)
            if name.endswith(("wo.weight", "w2.weight", "mlp.w2")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    def forward(
        self, idx: torch.Tensor, caches: list[dict] | None = None, start: int = 0, last_only: bool = False
    ) -> torch.Tensor:
        """Logits (B, T, vocab) for token ids (B, T) at positions start..start+T-1 (B, 1, vocab with
        `last_only`: the last block's attention queries, its MLP and the head, the costliest layer with
        a large vocabulary, run on the last position only)."""
        t = idx.shape[1]
        if start + t > self.cfg.block_size:
            raise ValueError(f"sequence of {start + t} tokens exceeds block_size {self.cfg.block_size}")
        cos, sin = self.cos[start : start + t], self.sin[start : start + t]
        x = self.embed(idx)
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, caches[i] if caches is not None else None, last_only and i == last)
        routed = [self.moe(i) for i in self.moe_layers] + [self.blocks[i] for i in self.mod_layers]
        if routed and caches is None:
            self.aux_loss = sum(m.aux for m in routed)
            if self.routing is not None:
                for key, m in zip([*self.moe_layers, *(f"mod{i}" for i in self.mod_layers)], routed):
                    self.routing[key] = self.routing[key] + m.stats if key in self.routing else m.stats.clone()
                self.routing["passes"] = self.routing.get("passes", 0) + 1
        return self.head(self.norm(x))

    def moe(self, i: int) -> MoE:
        block = self.blocks[i]
        return (block.block if isinstance(block, DepthRouted) else block).mlp

    def train(self, mode: bool = True) -> GPT:
        """Mixture-of-Depths blocks route by top-k in training and by the causal decision otherwise."""
        super().train(mode)
        self.depth_routing("topk" if mode else "causal")
        return self

    def depth_routing(self, mode: str) -> None:
        """Set how the Mixture-of-Depths blocks route: "topk" (training's, non-causal) or "causal"."""
        for i in self.mod_layers:
            self.blocks[i].mode = mode

    def parameter_counts(self) -> dict[str, int]:
        """Total parameters, and those a token uses (its k experts of each MoE layer, not all of them)."""
        total = sum(p.numel() for p in self.parameters())
        idle = 0
        for i in self.moe_layers:
            moe = self.moe(i)
            idle += (moe.n_experts - moe.top_k) * (moe.w13[0].numel() + moe.w2[0].numel())
        return {"total": total, "active": total - idle}

    def track_routing(self) -> None:
        """Sum the routing statistics of every forward pass from now until `routing_metrics` (an evaluation)."""
        self.routing = {}

    def routing_metrics(self) -> dict[str, float]:
        """Per MoE layer, from the passes tracked last: each expert's share of the token assignments, max/mean
        load, dead experts (under a quarter of a uniform share), routing entropy and the two auxiliary losses;
        per Mixture-of-Depths layer: the share of tokens routed, the agreement of that decision with top-k,
        and the router's BCE."""
        out: dict[str, float] = {}
        acc, self.routing = self.routing or {}, None
        passes = acc.pop("passes", 0)
        for i, stats in acc.items():
            if isinstance(i, str):  # a Mixture-of-Depths block: routed share, agreement with top-k, router BCE
                share, agree, bce = (stats / passes).tolist()
                out.update({f"{i}_routed_share": share, f"{i}_topk_agreement": agree, f"{i}_router_bce": bce})
                continue
            moe = self.moe(i)
            counts = stats[: moe.n_experts]
            share = counts / counts.sum()
            name = f"moe{i}"
            out.update({f"{name}_share{e}": float(v) for e, v in enumerate(share)})
            out[f"{name}_max_load"] = float(share.max() * moe.n_experts)
            out[f"{name}_dead"] = int((share < 0.25 / moe.n_experts).sum())
            balance, z, entropy = (stats[moe.n_experts:] / passes).tolist()
            out.update({f"{name}_entropy": entropy, f"{name}_balance_loss": balance, f"{name}_z_loss": z})
        return out

    def compile_blocks(self) -> None:
        """Regional compilation: every block is compiled in place with one shared compiled code, since the
        blocks are identical up to their weights (PyTorch's regional-compilation recipe). Compiling traces
        and builds one block's forward and backward instead of the whole stack's. Calls with a KV cache or
        `last_only` (generation, scoring) run eagerly: `torch.compiler.set_stance("force_eager")`."""
        for block in self.blocks:  # routing's data-dependent shapes: MoE and MoD blocks stay eager
            if isinstance(block, Block) and not isinstance(block.mlp, MoE):
                block.compile(dynamic=False)

    def _eager(self, *args, **kwargs) -> torch.Tensor:
        """A forward pass with compiled blocks run eagerly (each generation step has a new length, for which
        they would recompile); the stance is set around the call only, not while the generator waits."""
        with torch.compiler.set_stance("force_eager"):
            return self(*args, **kwargs)

    @torch.inference_mode()
    def generate(
        self,
        prompt_ids: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        use_cache: bool = True,
    ):
        """Yield new token ids one at a time (sampling; temperature 0 is greedy). The context slides
        when it fills block_size (the cache is then rebuilt from the last block_size tokens)."""
        gen = torch.Generator(device=prompt_ids.device)
        gen.manual_seed(seed if seed is not None else torch.seed())
        ids = prompt_ids.view(1, -1)
        caches: list[dict] | None = None
        for _ in range(max_new_tokens):
            if caches is None:  # (re)start: one full pass over the last block_size tokens fills the caches
                window = ids[:, -self.cfg.block_size :]
                caches = [{} for _ in self.blocks] if use_cache else None
                logits = self._eager(window, caches, last_only=True)[:, -1]
                pos = window.shape[1]
            next_id = sample_next(logits[0].float(), temperature, top_k, top_p, gen)
            yield int(next_id)
            ids = torch.cat([ids, next_id.view(1, 1)], 1)
            if caches is not None and pos < self.cfg.block_size:
                logits = self._eager(next_id.view(1, 1), caches, start=pos)[:, -1]
                pos += 1
            else:
                caches = None


def is_moe_block(cfg: GPTConfig, i: int) -> bool:
    """Whether block i (0-based) has the Mixture-of-Experts MLP: every moe_every-th block, counting from 1."""
    return bool(cfg.moe_experts) and (i + 1) % cfg.moe_every == 0


def is_mod_block(cfg: GPTConfig, i: int) -> bool:
    """Whether block i (0-based) is depth-routed: every mod_every-th block, counting from 1, below capacity 1."""
    return cfg.mod_capacity is not None and cfg.mod_capacity < 1 and (i + 1) % cfg.mod_every == 0


@register_model("gpt", GPTConfig)
def build_gpt(cfg: GPTConfig, input_shape: tuple[int, ...], vocab_size: int) -> GPT:
    """The language model for a `vocab_size`-token vocabulary and (unless set larger) `input_shape[0]`-token windows."""
    if cfg.vocab_size not in (None, vocab_size):
        raise ConfigError(f"model.vocab_size={cfg.vocab_size} differs from the tokenizer's {vocab_size}; leave it unset")
    return GPT(dataclasses.replace(cfg, vocab_size=vocab_size, block_size=cfg.block_size or input_shape[0]))


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None, gen) -> torch.Tensor:
    """One id from 1-D `logits`: greedy at temperature 0, else softmax(logits / T) cut to top-k and nucleus top-p."""
    if temperature == 0:
        return logits.argmax()
    logits = logits / temperature
    if top_k is not None and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(descending=True)
        cumulative = sorted_logits.softmax(0).cumsum(0)
        drop = cumulative - sorted_logits.softmax(0) >= top_p  # keep the smallest set reaching top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return torch.multinomial(logits.softmax(0), 1, generator=gen)[0]
