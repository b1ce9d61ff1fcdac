"""Topic-classification data for Lab 2.3: AG News from its CSV (offline) and Yahoo! Answers Topics
from the Hugging Face Hub (online), each as stratified train/val/test splits of texts and labels,
and `prepare_topics`, which tokenises them for a pretrained encoder with a chosen `max_length`.
"""

from __future__ import annotations

import csv
import hashlib
import html
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dla.config import TopicDataConfig
from dla.errors import DataError
from dla.data.tokens import Encoded, encode, token_lengths

AG_NEWS_CLASSES = ("World", "Sports", "Business", "Sci/Tech")
AG_NEWS_TEST_MD5 = "d52ea96a97a2d943681189a97654912d"
AG_NEWS_HINT = (
    "AG News is the test.csv published with the data set (7,600 rows: class 1-4, title, description), e.g. "
    "../shared/data/ag_news/test.csv; put it at DATA_ROOT/ag_news/test.csv or pass data.path=FILE"
)
YAHOO_CLASSES = (
    "Society & Culture", "Science & Mathematics", "Health", "Education & Reference", "Computers & Internet",
    "Sports", "Business & Finance", "Entertainment & Music", "Family & Relationships", "Politics & Government",
)
TOPIC_CLASSES = {"ag_news": AG_NEWS_CLASSES, "yahoo_answers_topics": YAHOO_CLASSES}


@dataclass
class Split:
    texts: list[str]
    labels: np.ndarray  # int64 class indices

    def __len__(self) -> int:
        return len(self.texts)

    def counts(self, n_classes: int) -> list[int]:
        return np.bincount(self.labels, minlength=n_classes).tolist()


@dataclass
class TopicData:
    train: Split
    val: Split
    test: Split
    classes: tuple[str, ...]
    source: str  # how results name the data, e.g. "AG News (test.csv split 5600/800/1200)"
    extra: dict[str, Any] = field(default_factory=dict)  # recorded in summaries (file, md5, ...)

    def describe(self) -> dict[str, Any]:
        """Sizes and per-class counts of each split: what a run records and prints."""
        n = len(self.classes)
        return {name: {"size": len(s), "per_class": s.counts(n)}
                for name, s in (("train", self.train), ("val", self.val), ("test", self.test))}


def clean_ag_news(text: str) -> str:
    """Undo the CSV's escapes: `\\` for line breaks, HTML entities with or without their `&` (`#36;` is `$`)."""
    text = re.sub(r"(?<!&)(#\d+|(?<!\w)(?:quot|amp|lt|gt|hellip));", r"&\1;", text.replace("\\", " "))
    text = html.unescape(text)
    return re.sub(r"\s+", " ", text).strip()


def read_ag_news(path: Path) -> tuple[list[str], np.ndarray]:
    """Texts ("title. description") and 0-based labels of an AG News CSV."""
    texts, labels = [], []
    i = 0
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            for i, row in enumerate(csv.reader(fh), 1):
                if len(row) != 3 or not row[0].strip().isdigit() or not 1 <= int(row[0]) <= 4:
                    raise DataError(f"{path}, line {i}: expected class index 1-4, title, description")
                labels.append(int(row[0]) - 1)
                title, description = clean_ag_news(row[1]), clean_ag_news(row[2])
                texts.append(f"{title}. {description}" if title and title[-1] not in ".?!" else f"{title} {description}")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: damaged or not UTF-8 (byte {exc.start}: {exc.reason}); {_md5_note(path)}") from None
    except csv.Error as exc:
        raise DataError(f"{path}, row {i + 1}: damaged CSV ({exc}); {_md5_note(path)}") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read the AG News CSV ({exc})") from None
    if not texts:
        raise DataError(f"{path}: no rows")
    return texts, np.asarray(labels, dtype=np.int64)


def _md5_note(path: Path) -> str:
    try:
        digest = hashlib.md5(Path(path).read_bytes()).hexdigest()
    except OSError:
        return "expected the AG News test.csv"
    return f"its md5 is {digest}, the AG News test.csv's is {AG_NEWS_TEST_MD5}"


def find_ag_news(cfg: TopicDataConfig, data_root: Path | None) -> Path:
    """`data.path`, else DATA_ROOT/ag_news/test.csv, else ../shared/data/ag_news/test.csv (from the working folder)."""
    if cfg.path:
        path = Path(cfg.path).expanduser()
        if not path.is_file():
            raise DataError(f"data.path={cfg.path}: no such file; {AG_NEWS_HINT}")
        return path
    tried = [Path(data_root) / "ag_news" / "test.csv"] if data_root else []
    tried.append(Path("..") / "shared" / "data" / "ag_news" / "test.csv")
    for path in tried:
        if path.is_file():
            return path
    raise DataError(f"AG News not found (looked in {', '.join(map(str, tried))}); {AG_NEWS_HINT}")


def stratified_split(labels: np.ndarray, sizes: list[int], seed: int) -> list[np.ndarray]:
    """Disjoint index sets of the given sizes, each with (as nearly as possible) the class mix of `labels`."""
    from sklearn.model_selection import train_test_split

    if sum(sizes) > len(labels):
        raise DataError(f"split sizes {sizes} add up to {sum(sizes)}, more than the {len(labels)} rows")
    rest = np.arange(len(labels))
    if sum(sizes) < len(rest):  # first a stratified subset of the total size
        _check_stratifiable(labels[rest], sum(sizes), sizes)
        rest, _ = train_test_split(rest, train_size=sum(sizes), stratify=labels[rest], random_state=seed)
    parts = []
    for size in sizes[:-1]:
        _check_stratifiable(labels[rest], size, sizes)
        take, rest = train_test_split(rest, train_size=size, stratify=labels[rest], random_state=seed)
        parts.append(np.sort(take))
    return [*parts, np.sort(rest)]


def _check_stratifiable(labels: np.ndarray, size: int, sizes: list[int]) -> None:
    """What scikit-learn's stratified split of `labels` into `size` and the rest needs: two or more rows of
    each class, and each side at least one row per class."""
    classes, counts = np.unique(labels, return_counts=True)
    if counts.min() < 2:
        raise DataError(f"split sizes {sizes}: a stratified split needs at least 2 rows of each class, and class "
                        f"{classes[counts.argmin()] + 1} has {counts.min()} of the {len(labels)} left to split; "
                        f"use more rows or fewer parts")
    if min(size, len(labels) - size) < len(classes):
        raise DataError(f"split sizes {sizes}: splitting {len(labels)} rows into {size} and {len(labels) - size} "
                        f"leaves a part with fewer rows than the {len(classes)} classes; each part needs one of each")


def _take(texts: list[str], labels: np.ndarray, idx: np.ndarray) -> Split:
    return Split([texts[i] for i in idx], labels[idx])


def load_ag_news(cfg: TopicDataConfig, data_root: Path | None = None) -> TopicData:
    """AG News from its CSV, split stratified with `cfg.split_seed` into `cfg.split_sizes`."""
    path = find_ag_news(cfg, data_root)
    texts, labels = read_ag_news(path)
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    train, val, test = (_take(texts, labels, idx) for idx in stratified_split(labels, cfg.split_sizes, cfg.split_seed))
    sizes = "/".join(str(n) for n in cfg.split_sizes)
    canonical = md5 == AG_NEWS_TEST_MD5
    source = f"AG News ({'test.csv' if canonical else path.name}, stratified split {sizes})"
    return TopicData(train, val, test, AG_NEWS_CLASSES, source,
                     {"file": str(path.resolve()), "md5": md5, "canonical_test_csv": canonical})


def _subset(labels: np.ndarray, size: int | None, seed: int) -> np.ndarray:
    if size is None or size >= len(labels):
        return np.arange(len(labels))
    return stratified_split(labels, [size, len(labels) - size], seed)[0]


YAHOO_FIELDS = {"title": "question_title", "content": "question_content", "answer": "best_answer"}


def yahoo_texts(columns: dict[str, list[str]], fields: list[str], lowercase: bool) -> list[str]:
    """One text per question: the chosen fields (of title, content, answer) joined by a space, whitespace
    collapsed, lowercased if asked. The original's input is fields [title, content], lowercased."""
    texts = []
    for parts in zip(*(columns[YAHOO_FIELDS[f]] for f in fields)):
        text = re.sub(r"\s+", " ", " ".join(p for p in parts if p)).strip()
        texts.append(text.lower() if lowercase else text)
    return texts


def load_yahoo(cfg: TopicDataConfig) -> TopicData:
    """Yahoo! Answers Topics from the Hub: the `data.fields` of each question, val carved from train."""
    from dla.hub import offline_var, unavailable

    try:
        from datasets import load_dataset
    except ImportError:
        raise DataError("Yahoo! Answers needs the datasets package: pip install 'dla[nlp]'") from None
    local = Path(cfg.hub_id).expanduser().is_dir()
    if not local and not offline_var() and (error := unavailable("data set", cfg.hub_id)):
        raise DataError(f"{error}; offline, run lab2-finetune-agnews instead")  # fail now, not after the retries
    try:
        ds = load_dataset(cfg.hub_id)
    except Exception as exc:  # noqa: BLE001  (offline, missing and network failures all mean "not available")
        error = None if local else unavailable("data set", cfg.hub_id)
        if error:
            raise DataError(f"{error}; offline, run lab2-finetune-agnews instead") from None
        raise DataError(f"data set {cfg.hub_id!r}: {str(exc).strip().splitlines()[0]}") from None

    def split(name: str) -> tuple[list[str], np.ndarray]:
        part = ds[name]
        columns = {YAHOO_FIELDS[f]: part[YAHOO_FIELDS[f]] for f in cfg.fields}
        return yahoo_texts(columns, cfg.fields, cfg.lowercase), np.asarray(part["topic"], dtype=np.int64)

    texts, labels = split("train")
    keep = _subset(labels, None if cfg.train_size is None else cfg.train_size + cfg.val_size, cfg.split_seed)
    train_idx, val_idx = stratified_split(labels[keep], [len(keep) - cfg.val_size, cfg.val_size], cfg.split_seed)
    train, val = _take(texts, labels, keep[train_idx]), _take(texts, labels, keep[val_idx])
    test_texts, test_labels = split("test")
    test = _take(test_texts, test_labels, _subset(test_labels, cfg.test_size, cfg.split_seed))
    source = (f"Yahoo! Answers Topics ({' + '.join(cfg.fields)}{', lowercased' if cfg.lowercase else ''}; "
              f"train {len(train)}, val {len(val)} from train; test {len(test)})")
    return TopicData(train, val, test, YAHOO_CLASSES, source, {"hub_id": cfg.hub_id})


def load_topic_data(cfg: TopicDataConfig, data_root: Path | None = None) -> TopicData:
    """The configured data set, split."""
    if cfg.name == "ag_news":
        return load_ag_news(cfg, data_root)
    return load_yahoo(cfg)


def pick_max_length(lengths: list[int] | np.ndarray, percentile: float, model_max: int | None) -> int:
    """The `percentile` of the token lengths, rounded up to a multiple of 8 and capped at the model's limit."""
    value = int(math.ceil(float(np.percentile(np.asarray(lengths), percentile)) / 8) * 8)
    cap = model_max if model_max and model_max < 100_000 else 512  # tokenizers without a limit report ~1e30
    return max(8, min(value, cap))


@dataclass
class TopicInputs:
    """Split texts, the encoder's tokenizer and the `max_length` they are truncated to."""

    tokenizer: Any
    data: TopicData
    max_length: int
    lengths: dict[str, float]  # the training texts' token-length distribution

    @property
    def source(self) -> str:
        return self.data.source

    def encode(self, split: str) -> Encoded:
        return encode(self.tokenizer, getattr(self.data, split).texts, self.max_length)


def length_stats(lengths: np.ndarray, max_length: int) -> dict[str, float]:
    p50, p95, p99 = np.percentile(lengths, [50, 95, 99])
    return {"mean": float(lengths.mean()), "p50": float(p50), "p95": float(p95), "p99": float(p99),
            "max": int(lengths.max()), "truncated_frac": float((lengths > max_length).mean())}


def prepare_topics(cfg: TopicDataConfig, pretrained: str, data_root: Path | None, tokenizer: Any = None,
                   quiet: bool = False) -> TopicInputs:
    """The split data, the tokenizer of `pretrained` and `max_length`: `data.max_length`, else the
    `data.length_percentile` of the training texts' token lengths (capped at the model's limit).
    Fills `cfg.max_length` when it was unset, so that the run's config.yaml records the value used."""
    from dla.hub import pretrained_tokenizer

    tokenizer = tokenizer if tokenizer is not None else pretrained_tokenizer(pretrained)
    data = load_topic_data(cfg, data_root)
    lengths = token_lengths(tokenizer, data.train.texts)
    chosen = cfg.max_length or pick_max_length(lengths, cfg.length_percentile, tokenizer.model_max_length)
    stats = length_stats(lengths, chosen)
    if not quiet:
        print(f"data: {data.source}; " + ", ".join(f"{k} {v['size']} {v['per_class']}" for k, v in data.describe().items()))
        how = "set by data.max_length" if cfg.max_length else f"the {cfg.length_percentile:g}th percentile"
        print(f"max_length {chosen} tokens ({how}); training texts: mean {stats['mean']:.1f}, p50 {stats['p50']:.0f}, "
              f"p95 {stats['p95']:.0f}, p99 {stats['p99']:.0f}, max {stats['max']}; "
              f"{100 * stats['truncated_frac']:.1f}% truncated")
    cfg.max_length = chosen
    return TopicInputs(tokenizer, data, chosen, stats)
