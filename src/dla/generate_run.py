"""Text generation from a Lab 2.1 model and tokenizer, streamed piece by piece (a run's: `dla.build.generate_from_run`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from dla.data.text import INFERNO_FIRST
from dla.errors import DlaError


def default_prompt(cfg) -> str:
    """The start of the Inferno, or of the training text when another file was used."""
    if cfg.data.path:
        first = Path(cfg.data.path).expanduser().read_text(encoding="utf-8").strip().split("\n")[0]
        return first[:20] or "\n"
    return INFERNO_FIRST[:20]  # "Nel mezzo del cammin"


def stream_text(
    model, tokenizer, prompt: str, max_new_tokens: int, temperature: float = 0.8, top_k: int | None = 50,
    top_p: float | None = 0.95, seed: int | None = 0,
) -> Iterator[str]:
    """Yield the text of each new token as it is sampled (the prompt itself is not yielded).

    Pieces are the difference between successive decodings of prompt + new ids, so BPE merges
    and word-boundary markers come out exactly as the full decode would write them.
    """
    ids = tokenizer.encode(prompt)
    if not ids:
        raise DlaError("the prompt is empty after tokenisation; give at least one character")
    device = next(model.parameters()).device
    done = tokenizer.decode(ids)
    new: list[int] = []
    prompt_ids = torch.tensor(ids, device=device)
    for token in model.generate(prompt_ids, max_new_tokens, temperature, top_k, top_p, seed):
        new.append(token)
        text = tokenizer.decode(ids + new)
        piece, done = text[len(done):], text
        yield piece


def sample_text(model, tokenizer, prompt: str, chars: int = 500, seed: int | None = 0, **sampling) -> str:
    """Prompt plus about `chars` generated characters (for the run's sample.txt)."""
    out = [prompt]
    total = 0
    was_training = model.training
    model.eval()
    try:
        for piece in stream_text(model, tokenizer, prompt, max_new_tokens=chars, seed=seed, **sampling):
            out.append(piece)
            total += len(piece)
            if total >= chars:
                break
    finally:
        model.train(was_training)
    return "".join(out)
