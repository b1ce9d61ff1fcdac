"""Text corpora for Lab 2.1: the Inferno (offline from a local file, online from Project Gutenberg),
character and SentencePiece-BPE tokenizers, contiguous splits and random-window batches.

The corpus is split by character position at line boundaries into contiguous train | val | test
parts *before* tokenising, so char-level and BPE models are scored on exactly the same test text and
their losses compare on one scale (bits per character). The BPE tokenizer is trained on the
training part only, like any other fitted preprocessing.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from dla.errors import DataError

# The shared offline copy (see ../shared/data/inferno/PROVENANCE.md): Gutenberg eBook #997 with the
# front matter, canto headings and licence removed, accents written the Gutenberg way (e`).
INFERNO_MD5 = "4e22321d9a3c16c9843f080cda159630"
INFERNO_URL = "https://www.gutenberg.org/cache/epub/997/pg997.txt"
INFERNO_FIRST = "Nel mezzo del cammin di nostra vita"
INFERNO_LAST = "E quindi uscimmo a riveder le stelle."
INFERNO_HINT = "dla data import inferno PATH (e.g. ../shared/data/inferno), or a network for Project Gutenberg"

_HEADING = re.compile(r"^\s*(la divina commedia.*|inferno\b.*|canto\s+[ivxlc]+\b.*)$", re.IGNORECASE)


def strip_gutenberg(raw: str) -> str:
    """The poem out of a Project Gutenberg #997 file: no header, licence, introduction or canto headings.

    Keeps the text from the first line of Canto I to the last line of Canto XXXIV, drops heading
    lines ("Inferno", "Canto II", ...), turns runs of blank lines into one and writes it the way the
    shared copy is laid out (a leading blank line, one blank line between terzine and cantos).
    """
    text = raw.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")
    start = re.search(r"^\*\*\* ?START OF.*$", text, re.MULTILINE)
    end = re.search(r"^\*\*\* ?END OF.*$", text, re.MULTILINE)
    body = text[start.end() if start else 0 : end.start() if end else len(text)]
    first = body.find(INFERNO_FIRST)
    last = body.rfind(INFERNO_LAST)
    if first < 0 or last < 0 or last < first:
        raise DataError(
            f"this does not look like the Inferno: cannot find {INFERNO_FIRST!r} ... {INFERNO_LAST!r}"
        )
    first = body.rfind("\n", 0, first) + 1  # from the start of that line
    poem = body[first : last + len(INFERNO_LAST)]
    lines: list[str] = []
    for line in poem.split("\n"):
        line = line.rstrip()
        if _HEADING.match(line):
            continue
        if not line and (not lines or not lines[-1]):
            continue
        lines.append(line)
    return "\n" + "\n".join(lines) + "\n"


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def inferno_path(root: Path) -> Path:
    return root / "inferno" / "inferno.txt"


def import_inferno(source: Path, root: Path) -> Path:
    """Verify a local Inferno (the cleaned file, a folder holding it, or a raw Gutenberg #997 file)
    and copy it to where the loaders find it."""
    if source.is_dir():
        candidates = sorted(source.rglob("inferno.txt")) or sorted(source.rglob("*.txt"))
        if not candidates:
            raise DataError(f"{source}: no .txt file inside")
        source = candidates[0]
    if not source.is_file():
        raise DataError(f"{source}: no such file or folder")
    data = source.read_bytes()
    if md5(data) != INFERNO_MD5:
        try:
            text = strip_gutenberg(data.decode("utf-8", errors="replace"))
        except DataError as exc:
            raise DataError(f"{source}: {exc} (reference md5 {INFERNO_MD5}, this file's {md5(data)})") from None
        data = text.encode()
        if md5(data) != INFERNO_MD5:
            raise DataError(
                f"{source}: checksum differs from the reference Inferno (md5 {INFERNO_MD5}) even after "
                "stripping Gutenberg's front matter; to train on another text use data.path=FILE"
            )
    target = inferno_path(root)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(target)
    return target


def download_inferno(root: Path) -> Path:
    """Fetch eBook #997 from Project Gutenberg and strip it to the poem."""
    print(f"downloading the Inferno from {INFERNO_URL}")
    try:
        with urllib.request.urlopen(INFERNO_URL, timeout=30) as response:
            raw = response.read().decode("utf-8", errors="replace")
    except OSError as exc:
        raise DataError(f"the Inferno is not on disk and the download failed ({exc}); offline: {INFERNO_HINT}") from None
    text = strip_gutenberg(raw)
    target = inferno_path(root)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    if md5(text.encode()) != INFERNO_MD5:
        print(f"note: {target} differs from the reference copy (Gutenberg edits its files); results may differ slightly")
    return target


def load_corpus(name: str, root: Path, path: str | None = None, download: bool = True) -> tuple[str, str]:
    """(text, source) of the named corpus, or of any UTF-8 file given as `path`."""
    if path:
        p = Path(path).expanduser()
        if not p.is_file():
            raise DataError(f"data.path: {p} is not a file")
        return read_utf8(p), str(p)
    file = inferno_path(root)
    if not file.is_file():
        if not download:
            raise DataError(f"the Inferno is not in {root}; {INFERNO_HINT}")
        download_inferno(root)
    return read_utf8(file, f" (reference md5 {INFERNO_MD5}; {INFERNO_HINT})"), name


def read_utf8(path: Path, hint: str = "") -> str:
    """A text file's content; one that is not UTF-8 or cannot be read raises a one-line `DataError`."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: damaged or not UTF-8 text (byte {exc.start}: {exc.reason}); its md5 is {md5(data)}{hint}"
        ) from None


# ---------------------------------------------------------------------------------------- tokenizers


class CharTokenizer:
    """One id per distinct character of the text it is built from (the whole corpus, so that no
    validation or test character is unknown)."""

    kind = "char"

    def __init__(self, chars: list[str]):
        self.chars = chars
        self.index = {c: i for i, c in enumerate(chars)}

    @classmethod
    def train(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        unknown = sorted(set(text) - self.index.keys())
        if unknown:
            hint = " (the Inferno writes accents the Gutenberg way: e` for è, piu` for più)" if any(
                ord(c) > 127 for c in unknown) else ""
            raise DataError(f"characters not in the model's vocabulary: {''.join(unknown)!r}{hint}")
        return [self.index[c] for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"kind": "char", "chars": self.chars}, ensure_ascii=False))


class BPETokenizer:
    """SentencePiece-style BPE from the `tokenizers` library, trained like the original lab's."""

    kind = "bpe"
    SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]

    def __init__(self, tok):
        self.tok = tok

    @classmethod
    def train(cls, text: str, vocab_size: int = 5549, min_frequency: int = 2) -> BPETokenizer:
        from tokenizers import SentencePieceBPETokenizer

        tok = SentencePieceBPETokenizer()
        tok.train_from_iterator(
            [text], vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=cls.SPECIALS,
            show_progress=False,
        )
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False)

    def save(self, path: Path) -> None:
        self.tok.save(str(path))


def train_tokenizer(kind: str, text: str, vocab_size: int, min_frequency: int) -> CharTokenizer | BPETokenizer:
    if kind == "char":
        return CharTokenizer.train(text)
    try:
        return BPETokenizer.train(text, vocab_size, min_frequency)
    except ImportError:
        raise DataError("data.tokenizer=bpe needs the `tokenizers` package: pip install 'dla[nlp]'") from None


def load_tokenizer(path: Path) -> CharTokenizer | BPETokenizer:
    """A tokenizer saved by `save` (a run directory's tokenizer.json)."""
    if not path.is_file():
        raise DataError(f"{path}: no tokenizer (is this a Lab 2.1 run directory?)")
    try:
        raw = json.loads(read_utf8(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: damaged tokenizer file (JSON error at line {exc.lineno}: {exc.msg})") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path}: damaged tokenizer file (not a JSON object)")
    if raw.get("kind") == "char":
        chars = raw.get("chars")
        if not isinstance(chars, list) or not all(isinstance(c, str) for c in chars):
            raise DataError(f"{path}: damaged tokenizer file (no list of characters)")
        return CharTokenizer(chars)
    from tokenizers import Tokenizer

    try:
        return BPETokenizer(Tokenizer.from_file(str(path)))
    except Exception as exc:  # noqa: BLE001  (the tokenizers library raises its own exception types)
        raise DataError(f"{path}: damaged tokenizer file ({str(exc).splitlines()[0][:120]})") from None


# -------------------------------------------------------------------------------------------- splits


def split_text(text: str, fractions: list[float]) -> list[str]:
    """Contiguous parts of `text` in the given proportions, each cut at the nearest line start."""
    total = sum(fractions)
    cuts, acc = [0], 0.0
    for frac in fractions[:-1]:
        acc += frac / total
        pos = int(len(text) * acc)
        nl = text.find("\n", pos)
        cuts.append(len(text) if nl < 0 else nl + 1)
    cuts.append(len(text))
    return [text[a:b] for a, b in zip(cuts, cuts[1:])]


@dataclass
class TextSplit:
    ids: torch.Tensor  # int64 token ids
    chars: int  # characters of text they encode

    @property
    def chars_per_token(self) -> float:
        return self.chars / max(1, len(self.ids))


@dataclass
class TextData:
    train: TextSplit
    val: TextSplit
    test: TextSplit
    tokenizer: CharTokenizer | BPETokenizer
    source: str
    test_is_val: bool = False  # a two-way split (e.g. nanoGPT's 90/10): the test split is the val split

    def describe(self) -> str:
        parts = f"{len(self.train.ids):,} train / {len(self.val.ids):,} val / "
        parts += "val as test" if self.test_is_val else f"{len(self.test.ids):,} test"
        return f"{self.source}: {parts} {self.tokenizer.kind} tokens (vocab {self.tokenizer.vocab_size})"


def build_text_data(
    text: str,
    source: str,
    fractions: list[float],
    tokenizer: str = "char",
    vocab_size: int = 5549,
    min_frequency: int = 2,
    tok: CharTokenizer | BPETokenizer | None = None,
) -> TextData:
    """Split, fit the tokenizer on the training part (unless `tok` is given) and encode each part."""
    train_text, val_text, test_text = split_text(text, fractions)
    if tok is None:
        # A char vocabulary covers the whole text, so no val/test character is unknown.
        tok = CharTokenizer.train(text) if tokenizer == "char" else train_tokenizer(tokenizer, train_text, vocab_size, min_frequency)

    def part(t: str) -> TextSplit:
        return TextSplit(torch.tensor(tok.encode(t), dtype=torch.long), len(t))

    val = part(val_text)
    test_is_val = not test_text
    test = val if test_is_val else part(test_text)
    return TextData(part(train_text), val, test, tok, source, test_is_val)


# ------------------------------------------------------------------------------------------ batches


def random_windows(
    ids: torch.Tensor, block: int, batch: int, generator: torch.Generator, rank: int = 0, world: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch` random windows: inputs (B, block) and next-token targets (B, block).

    All processes draw the same global batch from the same generator; each keeps its slice.
    """
    if len(ids) < block + 1:
        raise DataError(f"a split of {len(ids)} tokens is shorter than one window of {block + 1}")
    starts = torch.randint(0, len(ids) - block, (batch,), generator=generator)
    starts = starts[rank * batch // world : (rank + 1) * batch // world]
    offsets = torch.arange(block + 1)
    windows = ids[starts[:, None] + offsets]
    return windows[:, :-1], windows[:, 1:]


def tiled_windows(ids: torch.Tensor, block: int, batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Every token of `ids` (but the first) predicted exactly once: consecutive windows of `block`
    inputs whose targets tile the split. The last window is shorter when the split does not divide."""
    n = len(ids) - 1
    starts = list(range(0, n, block))
    for i in range(0, len(starts), batch):
        chunk = starts[i : i + batch]
        full = [s for s in chunk if s + block <= n]
        if full:
            index = torch.tensor(full)[:, None] + torch.arange(block + 1)
            windows = ids[index]
            yield windows[:, :-1], windows[:, 1:]
        for s in chunk:
            if s + block > n:  # the tail
                yield ids[s:n].unsqueeze(0), ids[s + 1 : n + 1].unsqueeze(0)


def last_position_starts(n_tokens: int, block: int, count: int | None = None) -> torch.Tensor:
    """Start positions of the windows the original lab's score uses: every window of `block` tokens that
    has a next token, or a fixed random sample of `count` of them (all when fewer), in order.

    A random sample, not evenly spaced windows: a window's score is compared with its target's loss in
    consecutive windows, which depends on where the target falls within one (its position modulo
    `block`), and an even spacing visits those positions unevenly (it was off by 3 standard errors).
    The sample is drawn from a fixed seed, so every run of a split scores the same windows."""
    total = max(0, n_tokens - block)
    if count is None or count >= total:
        return torch.arange(total)
    return torch.randperm(total, generator=torch.Generator().manual_seed(0))[:count].sort().values


def last_position_windows(ids: torch.Tensor, block: int, batch: int,
                          starts: torch.Tensor | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The original lab's scoring: windows of `block` tokens (at `starts`; default every one) with each
    one's single next token, `batch` windows at a time."""
    starts = last_position_starts(len(ids), block) if starts is None else starts
    for i in range(0, len(starts), batch):
        s = starts[i : i + batch]
        yield ids[s[:, None] + torch.arange(block)], ids[s + block]


def bits_per_char(nats_per_token: float, split: TextSplit) -> float:
    return nats_per_token / split.chars_per_token / math.log(2)
