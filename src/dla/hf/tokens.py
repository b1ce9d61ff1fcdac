"""Lab 2.2: what a tokenizer does to a sentence (words, tokens, ids, and the round trip back)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from dla.hf.hub import pretrained_tokenizer

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
