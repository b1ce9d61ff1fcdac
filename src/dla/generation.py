"""Text generation: sampling from a Lab 2.1 GPT and its tokenizer, streamed piece by piece (a run's:
`dla.build.generate_from_run`), and Hugging Face `generate()` with a pretrained causal LM (Lab 2.2)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dla.data.text import INFERNO_FIRST
from dla.errors import DlaError
from dla.hub import load_pretrained, pretrained_tokenizer


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


@dataclass
class Sampling:
    """The original's settings: `max_length=50, do_sample=True, top_k=50, temperature=0.7`, seed 42."""

    max_length: int = 50  # prompt plus new tokens, as in `generate(max_length=...)`
    max_new_tokens: int | None = None  # new tokens, whatever the prompt's length (overrides max_length)
    temperature: float = 0.7  # 0: greedy decoding
    top_k: int | None = 50
    top_p: float | None = None
    num_return_sequences: int = 1
    seed: int | None = 42

    def kwargs(self) -> dict[str, Any]:
        if self.max_length < 1 or (self.max_new_tokens or 1) < 1 or self.num_return_sequences < 1:
            raise DlaError("--max-length, --max-new-tokens and --num-return-sequences must be >= 1")
        if self.temperature < 0 or (self.top_p is not None and not 0 < self.top_p <= 1):
            raise DlaError("--temperature must be >= 0 and --top-p in (0, 1]")
        sample = self.temperature > 0
        length = {"max_new_tokens": self.max_new_tokens} if self.max_new_tokens else {"max_length": self.max_length}
        args: dict[str, Any] = {**length, "do_sample": sample, "num_return_sequences": self.num_return_sequences}
        if sample:
            args.update(temperature=self.temperature, top_k=self.top_k or 0, top_p=self.top_p or 1.0)
        elif self.num_return_sequences > 1:
            raise DlaError("greedy decoding (--temperature 0) gives one sequence; use --num-return-sequences 1")
        return args


def load_causal_lm(name: str) -> tuple[Any, Any]:
    """Model and tokenizer by Hub id or folder, in eval mode."""
    from transformers import AutoModelForCausalLM

    tokenizer = pretrained_tokenizer(name)
    model = load_pretrained(AutoModelForCausalLM.from_pretrained, name, "model")
    return model.eval(), tokenizer


def generate_ids(model: Any, tokenizer: Any, prompt: str, sampling: Sampling, streamer: Any = None) -> torch.Tensor:
    """Token ids (prompt included) of `num_return_sequences` continuations; `streamer` (one sequence)
    receives tokens as they are sampled."""
    if not prompt:
        raise DlaError("the prompt is empty; give some text to continue")
    inputs = tokenizer(prompt, return_tensors="pt")
    n_prompt = inputs["input_ids"].shape[1]
    if not sampling.max_new_tokens and n_prompt >= sampling.max_length:
        raise DlaError(f"the prompt is {n_prompt} tokens, not shorter than --max-length {sampling.max_length}")
    if sampling.seed is not None:
        torch.manual_seed(sampling.seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.inference_mode():
        return model.generate(**inputs.to(model.device), **sampling.kwargs(), pad_token_id=pad, streamer=streamer)


def generate(model: Any, tokenizer: Any, prompt: str, sampling: Sampling, streamer: Any = None) -> list[str]:
    """The texts (prompt included) of `generate_ids`."""
    return tokenizer.batch_decode(generate_ids(model, tokenizer, prompt, sampling, streamer), skip_special_tokens=True)


def stream_to_stdout(tokenizer: Any) -> Any:
    """A streamer that prints the prompt, then each new piece of text as soon as it decodes."""
    from transformers import TextStreamer

    return TextStreamer(tokenizer, skip_special_tokens=True)
