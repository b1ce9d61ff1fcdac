"""Token batching for a pretrained encoder (Lab 2.3): encoding, length-grouped batches with dynamic padding,
running an encoder over them; and the GPT-2 tokenizer on one sentence (Lab 2.2, `dla hf tokenize`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from dla.device import autocast
from dla.hub import pretrained_tokenizer


@dataclass
class Encoded:
    """Token ids of each text (truncated, unpadded) and the pad id used to batch them."""

    ids: list[list[int]]
    pad_id: int
    types: list[list[int]] | None = None  # token type ids of text pairs (BERT's segments), if any

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))

    def batch(self, index: Sequence[int], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """`input_ids` and `attention_mask` (and `token_type_ids` of pairs) of the given rows, padded to the longest."""
        rows = [self.ids[i] for i in index]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        out = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
        if self.types is not None:
            types = torch.zeros((len(rows), width), dtype=torch.long)
            for i, j in enumerate(index):
                types[i, : len(self.types[j])] = torch.tensor(self.types[j])
            out["token_type_ids"] = types.to(device)
        return out


def token_lengths(tokenizer: Any, texts: Sequence[str]) -> np.ndarray:
    """Untruncated token counts (with special tokens): the distribution `max_length` is chosen from."""
    ids = tokenizer(list(texts), truncation=False, verbose=False)["input_ids"]
    return np.asarray([len(x) for x in ids], dtype=np.int64)


def encode(tokenizer: Any, texts: Sequence[str], max_length: int) -> Encoded:
    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return Encoded([list(x) for x in ids], int(pad or 0))


def train_batches(lengths: np.ndarray, batch_size: int, generator: torch.Generator, group_by_length: bool,
                  mega: int = 50) -> list[np.ndarray]:
    """Shuffled batches; grouped by length: sorted within chunks of `mega` batches, then the batches shuffled.

    Grouping keeps the randomness of which examples meet (chunks are random) while a batch's
    texts have similar lengths, so padding to the longest wastes little compute.
    """
    order = torch.randperm(len(lengths), generator=generator).numpy()
    if group_by_length:
        chunk = batch_size * mega
        order = np.concatenate([c[np.argsort(-lengths[c], kind="stable")]
                                for c in np.array_split(order, range(chunk, len(order), chunk))])
    batches = [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
    if group_by_length:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    return batches


def length_sorted(lengths: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    order = np.argsort(lengths, kind="stable")
    for i in range(0, len(order), batch_size):
        yield order[i: i + batch_size]


@torch.inference_mode()
def run_encoder(forward, data: Encoded, batch_size: int, device: torch.device, precision: str = "fp32",
                desc: str = "eval") -> np.ndarray:
    """`forward(batch) -> (n, d)` over all rows in length order (least padding); rows back in input order."""
    out: np.ndarray | None = None
    lengths = data.lengths
    batches = list(length_sorted(lengths, batch_size))
    for index in tqdm(batches, desc=desc, leave=False, disable=None):
        with autocast(device, precision):
            values = forward(data.batch(index, device)).float().cpu().numpy()
        if out is None:
            out = np.empty((len(lengths), values.shape[1]), dtype=np.float32)
        out[index] = values
    assert out is not None
    return out


EXAMPLE = "This is an example sentence to encode into tokens."


@dataclass
class Tokenized:
    text: str
    words: int  # whitespace-separated words
    ids: list[int]
    tokens: list[str]
    decoded: str

    @property
    def round_trip(self) -> bool:
        return self.decoded == self.text

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "n_tokens": len(self.ids), "round_trip": self.round_trip}

    def format(self) -> str:
        return "\n".join([
            f"text:     {self.text}",
            f"words:    {self.words}",
            f"tokens:   {len(self.ids)}",
            f"ids:      {self.ids}",
            f"pieces:   {self.tokens}",
            f"decoded:  {self.decoded}",
            f"decode(encode(text)) == text: {self.round_trip}",
        ])


def tokenize(text: str, tokenizer: Any) -> Tokenized:
    """Encode `text` without special tokens and decode it back."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    return Tokenized(text, len(text.split()), ids, tokenizer.convert_ids_to_tokens(ids), tokenizer.decode(ids))


def tokenize_with(text: str, name: str = "gpt2") -> Tokenized:
    """`tokenize` with the tokenizer `name` (Hub id or folder)."""
    return tokenize(text, pretrained_tokenizer(name))
