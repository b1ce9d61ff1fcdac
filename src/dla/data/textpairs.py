"""Text pairs for Lab 2's exercises 3.2 (multiple choice) and 3.3 (retrieval).

Offline both run on AG News, whose rows are titled articles: retrieval finds an article's own
description from its title among every description of the file; multiple choice picks an
article's title, given its description, among options whose distractors are titles of other
articles of the same topic (so that the topic alone does not give the answer). The articles are
split as `lab2-finetune-agnews` splits them (stratified, `data.split_seed`). Online, retrieval
also takes a BEIR set (SciFact, the course's suggestion: from the Hub or a BEIR folder) and
multiple choice SWAG, through `datasets`; offline those stop with one line.

Any CSV of articles works too: AG News's own rows (class 1-4, title, description, no header) or a
CSV whose header names `title` and `description` (and, optionally, `label`).
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dla.data.topics import AG_NEWS_CLASSES, AG_NEWS_TEST_MD5, _md5_note, clean_ag_news, find_ag_news, stratified_split
from dla.errors import DataError

SPLITS = ("train", "val", "test")
LABEL_COLUMNS = ("label", "class", "topic", "class index")


@dataclass
class Articles:
    """Titled articles: title, description and topic label (0-based; all 0 for a CSV without labels)."""

    titles: list[str]
    descriptions: list[str]
    labels: np.ndarray
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.titles)


def read_articles(path: Path) -> Articles:
    """The articles of a CSV: AG News rows (class 1-4, title, description) or a header naming title and description."""
    titles, descriptions, labels = [], [], []
    i, columns = 0, None
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            for i, row in enumerate(csv.reader(fh), 1):
                if i == 1 and row and not row[0].strip().isdigit():  # a header row
                    names = [c.strip().lower() for c in row]
                    if "title" not in names or "description" not in names:
                        raise DataError(f"{path}: no title and description columns (the header has "
                                        f"{', '.join(row) or 'no names'}); expected AG News rows (class 1-4, title, "
                                        f"description) or a header naming title and description")
                    label = next((names.index(n) for n in LABEL_COLUMNS if n in names), None)
                    columns = (names.index("title"), names.index("description"), label)
                    continue
                if columns is None:
                    if len(row) != 3 or not row[0].strip().isdigit() or not 1 <= int(row[0]) <= 4:
                        raise DataError(f"{path}, line {i}: expected class index 1-4, title, description")
                    label, title, text = int(row[0]) - 1, row[1], row[2]
                else:
                    if len(row) <= max(c for c in columns if c is not None):
                        raise DataError(f"{path}, line {i}: {len(row)} fields, fewer than the header's columns")
                    title, text = row[columns[0]], row[columns[1]]
                    label = row[columns[2]].strip() if columns[2] is not None else "0"
                titles.append(clean_ag_news(title))
                descriptions.append(clean_ag_news(text))
                labels.append(label)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: damaged or not UTF-8 (byte {exc.start}: {exc.reason}); {_md5_note(path)}") from None
    except csv.Error as exc:
        raise DataError(f"{path}, row {i + 1}: damaged CSV ({exc}); {_md5_note(path)}") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read the CSV of articles ({exc})") from None
    if not titles:
        raise DataError(f"{path}: no rows")
    empty = next((n for n, (t, d) in enumerate(zip(titles, descriptions)) if not t or not d), None)
    if empty is not None:
        raise DataError(f"{path}: article {empty + 1} has an empty {'title' if not titles[empty] else 'description'}")
    if columns is None:
        return Articles(titles, descriptions, np.asarray(labels, dtype=np.int64), AG_NEWS_CLASSES)
    names = sorted(set(labels))  # a labelled CSV's own topic names, in sorted order
    classes = tuple(names)
    index = {name: k for k, name in enumerate(names)}
    return Articles(titles, descriptions, np.asarray([index[x] for x in labels], dtype=np.int64), classes)


def split_articles(cfg: Any, data_root: Path | None) -> tuple[Articles, list[np.ndarray], str, dict[str, Any]]:
    """The configured CSV of articles, its stratified train/val/test index sets, a source line and what a run records."""
    path = find_ag_news(cfg, data_root)
    articles = read_articles(path)
    parts = stratified_split(articles.labels, cfg.split_sizes, cfg.split_seed)
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    name = "AG News (test.csv" if md5 == AG_NEWS_TEST_MD5 else f"articles ({path.name}"
    source = f"{name}, stratified split {'/'.join(str(len(p)) for p in parts)})"
    return articles, parts, source, {"file": str(path.resolve()), "md5": md5}


# ------------------------------------------------------------------------------------------ retrieval


@dataclass
class Queries:
    texts: list[str]
    relevant: list[tuple[int, ...]]  # the corpus rows relevant to each query (at least one)

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class RetrievalData:
    """Queries of each split against one corpus; `val_docs`: the rows validation ranks (None: all)."""

    corpus: list[str]
    doc_ids: list[str]
    queries: dict[str, Queries]
    source: str
    val_docs: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"corpus": len(self.corpus), **{s: len(q) for s, q in self.queries.items()}}


def same_text_groups(texts: list[str]) -> list[tuple[int, ...]]:
    """For each text, every row holding the same text (itself included), in row order."""
    rows: dict[str, list[int]] = {}
    for i, t in enumerate(texts):
        rows.setdefault(t, []).append(i)
    return [tuple(rows[t]) for t in texts]


def article_retrieval(cfg: Any, data_root: Path | None) -> RetrievalData:
    """Titles as queries, every description as the corpus; a query's relevant rows are its own description
    and any identical one (AG News repeats 6 descriptions)."""
    articles, parts, source, extra = split_articles(cfg, data_root)
    same = same_text_groups(articles.descriptions)
    queries = {s: Queries([articles.titles[i] for i in idx], [same[i] for i in idx]) for s, idx in zip(SPLITS, parts)}
    val_docs = None if cfg.val_corpus == "all" else np.asarray(sorted({d for i in parts[1] for d in same[i]}))
    return RetrievalData(articles.descriptions, [str(i + 1) for i in range(len(articles))], queries,
                         f"{source}: title -> own description among {len(articles)}", val_docs, extra)


def beir_retrieval(cfg: Any) -> RetrievalData:
    """A BEIR set (corpus, queries, qrels): a local BEIR folder (`data.path`) or a Hub id pair (`data.hub_id`,
    `data.hub_id`-qrels). Train queries come from the train qrels (val carved from them), test from test."""
    path = Path(cfg.path).expanduser() if cfg.path else None
    if path is not None:
        if not (path / "corpus.jsonl").is_file():
            raise DataError(f"data.path={cfg.path}: not a BEIR folder (corpus.jsonl, queries.jsonl, qrels/*.tsv)")
        corpus_rows = _jsonl(path / "corpus.jsonl")
        query_rows = _jsonl(path / "queries.jsonl")
        qrels = {s: _qrels_tsv(path / "qrels" / f"{s}.tsv") for s in ("train", "test")}
        name = path.name
    else:
        corpus_rows, query_rows, qrels = _beir_from_hub(cfg.hub_id)
        name = cfg.hub_id
    doc_ids = [str(r["_id"]) for r in corpus_rows]
    corpus = [" ".join(x for x in (r.get("title") or "", r.get("text") or "") if x).strip() for r in corpus_rows]
    row_of = {d: i for i, d in enumerate(doc_ids)}
    text_of = {str(r["_id"]): r["text"] for r in query_rows}

    def queries(pairs: dict[str, list[str]]) -> Queries:
        kept = [(q, tuple(sorted(row_of[d] for d in docs if d in row_of))) for q, docs in sorted(pairs.items())
                if q in text_of]
        kept = [(q, rel) for q, rel in kept if rel]
        return Queries([text_of[q] for q, _ in kept], [rel for _, rel in kept])

    train, test = queries(qrels["train"]), queries(qrels["test"])
    if not len(test) or len(train) < 2:
        raise DataError(f"{name}: the qrels name no queries of the corpus (train {len(train)}, test {len(test)})")
    order = np.random.default_rng(cfg.split_seed).permutation(len(train))
    n_val = max(1, min(cfg.val_queries, len(train) // 5))
    val_rows, train_rows = np.sort(order[:n_val]), np.sort(order[n_val:])
    pick = lambda q, rows: Queries([q.texts[i] for i in rows], [q.relevant[i] for i in rows])  # noqa: E731
    split = {"train": pick(train, train_rows), "val": pick(train, val_rows), "test": test}
    source = f"BEIR {name} ({len(corpus)} documents; queries train {len(train_rows)}, val {n_val}, test {len(test)})"
    return RetrievalData(corpus, doc_ids, split, source, None, {"beir": name})


def _jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not readable JSON lines ({exc})") from None


def _qrels_tsv(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    if not path.is_file():
        return out
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        cells = line.split("\t")
        if n == 0 and cells[0] == "query-id" or len(cells) < 3:
            continue
        if float(cells[2]) > 0:
            out.setdefault(cells[0], []).append(cells[1])
    return out


def _beir_from_hub(hub_id: str) -> tuple[list[dict], list[dict], dict[str, dict[str, list[str]]]]:
    from dla.hub import offline_var, unavailable

    try:
        from datasets import load_dataset
    except ImportError:
        raise DataError("a BEIR set from the Hub needs the datasets package: pip install 'dla[nlp]'") from None
    if not offline_var() and (error := unavailable("data set", hub_id)):
        raise DataError(f"{error}; offline, run lab2-retrieval (AG News) instead")
    try:
        corpus = load_dataset(hub_id, "corpus")["corpus"]
        queries = load_dataset(hub_id, "queries")["queries"]
        qrels_sets = load_dataset(f"{hub_id}-qrels")
    except Exception as exc:  # noqa: BLE001  (offline, missing and network failures all mean "not available")
        error = unavailable("data set", hub_id)
        raise DataError(f"{error or f'data set {hub_id!r}: ' + str(exc).strip().splitlines()[0]}; offline, run "
                        f"lab2-retrieval (AG News) instead") from None
    qrels: dict[str, dict[str, list[str]]] = {}
    for split in ("train", "test"):
        pairs: dict[str, list[str]] = {}
        if split in qrels_sets:
            for row in qrels_sets[split]:
                if row["score"] > 0:
                    pairs.setdefault(str(row["query-id"]), []).append(str(row["corpus-id"]))
        qrels[split] = pairs
    return list(corpus), list(queries), qrels


def load_retrieval(cfg: Any, data_root: Path | None) -> RetrievalData:
    return article_retrieval(cfg, data_root) if cfg.name == "ag_news" else beir_retrieval(cfg)


# ------------------------------------------------------------------------------------------ multiple choice


@dataclass
class Choices:
    contexts: list[str]
    options: list[list[str]]
    answers: np.ndarray  # the index of the right option of each question

    def __len__(self) -> int:
        return len(self.contexts)


@dataclass
class ChoiceData:
    splits: dict[str, Choices]
    n_options: int
    source: str
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {s: len(c) for s, c in self.splits.items()}


def draw_distractors(titles: list[str], labels: np.ndarray, rows: np.ndarray, n_options: int,
                     rng: np.random.Generator, classes: tuple[str, ...], split: str) -> Choices:
    """For each article of `rows`: its title and `n_options - 1` other titles of its topic among `rows`, all distinct
    texts, the right one at a random position. The contexts are filled in by the caller."""
    by_topic: dict[int, list[str]] = {}
    for i in rows:
        group = by_topic.setdefault(int(labels[i]), [])
        if titles[i] not in group:
            group.append(titles[i])
    for topic, group in by_topic.items():
        if len(group) < n_options:
            raise DataError(f"topic {classes[topic]!r} has {len(group)} distinct titles in the {split} split, fewer "
                            f"than the {n_options} options (data.options); use fewer options or more articles")
    options, answers = [], []
    for i in rows:
        group = by_topic[int(labels[i])]
        own = group.index(titles[i])
        picks = rng.choice(len(group) - 1, size=n_options - 1, replace=False)
        others = [group[p + (p >= own)] for p in picks]  # skip the article's own title
        answer = int(rng.integers(n_options))
        options.append(others[:answer] + [titles[i]] + others[answer:])
        answers.append(answer)
    return Choices([], options, np.asarray(answers, dtype=np.int64))


def article_choices(cfg: Any, data_root: Path | None) -> ChoiceData:
    """Description -> its title among `data.options` titles of the same topic and split (seeded by data.split_seed)."""
    articles, parts, source, extra = split_articles(cfg, data_root)
    splits = {}
    for k, (split, rows) in enumerate(zip(SPLITS, parts)):
        rng = np.random.default_rng([cfg.split_seed, k])
        choices = draw_distractors(articles.titles, articles.labels, rows, cfg.options, rng, articles.classes, split)
        choices.contexts = [articles.descriptions[i] for i in rows]
        splits[split] = choices
    return ChoiceData(splits, cfg.options, f"{source}: description -> title among {cfg.options} of its topic", extra)


def swag_choices(cfg: Any) -> ChoiceData:
    """SWAG (regular): sent1 as the context, sent2 + each ending as the options; val carved from train, and the
    labelled validation split as the test split (SWAG's test labels are not public)."""
    from dla.hub import offline_var, unavailable

    try:
        from datasets import load_dataset
    except ImportError:
        raise DataError("SWAG needs the datasets package: pip install 'dla[nlp]'") from None
    local = Path(cfg.hub_id).expanduser().is_dir()
    if not local and not offline_var() and (error := unavailable("data set", cfg.hub_id)):
        raise DataError(f"{error}; offline, run lab2-multiple-choice (AG News) instead")
    try:
        ds = load_dataset(cfg.hub_id, "regular")
    except Exception as exc:  # noqa: BLE001
        error = None if local else unavailable("data set", cfg.hub_id)
        raise DataError(f"{error or f'data set {cfg.hub_id!r}: ' + str(exc).strip().splitlines()[0]}; offline, run "
                        f"lab2-multiple-choice (AG News) instead") from None

    def take(part: Any, rows: np.ndarray) -> Choices:
        part = part.select(rows.tolist())
        endings = [part[f"ending{k}"] for k in range(4)]
        options = [[f"{s2} {e[i]}".strip() for e in endings] for i, s2 in enumerate(part["sent2"])]
        return Choices(list(part["sent1"]), options, np.asarray(part["label"], dtype=np.int64))

    train = ds["train"]
    order = np.random.default_rng(cfg.split_seed).permutation(len(train))
    n_val = min(cfg.val_queries, len(train) // 5)
    n_train = len(train) - n_val if cfg.train_size is None else min(cfg.train_size, len(train) - n_val)
    test = ds["validation"]
    splits = {"train": take(train, np.sort(order[n_val:n_val + n_train])), "val": take(train, np.sort(order[:n_val])),
              "test": take(test, np.arange(len(test)))}
    source = f"SWAG (train {n_train}, val {n_val} from train; test: its validation split, {len(test)})"
    return ChoiceData(splits, 4, source, {"hub_id": cfg.hub_id})


def load_choices(cfg: Any, data_root: Path | None) -> ChoiceData:
    return article_choices(cfg, data_root) if cfg.name == "ag_news" else swag_choices(cfg)
