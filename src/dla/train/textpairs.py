"""Tasks over text pairs (Lab 2 exercises 3.2 and 3.3) for the one training loop, and their metrics.

- `RetrievalTask`: a bi-encoder trained with in-batch negatives (each query's own document is the
  positive, the batch's other documents the negatives: sentence-transformers' MultipleNegativesRanking
  loss); evaluated by ranking a corpus for each query: nDCG@10, MRR@10, Recall@1 and Recall@10.
  The test pass also scores the baselines on the same queries: BM25 (`bm25s`) and the frozen encoder.
- `ChoiceTask`: a scorer of (context, option) pairs trained with cross-entropy over the options or a
  margin ranking loss (the model says which); evaluated by accuracy, with the frozen encoder's cosine
  (no training) as the baseline.

Under DDP each process takes its slice of every batch (in-batch negatives are then those of its
slice) and encodes its share of a corpus; the shares are gathered before ranking.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn

from dla.data.textpairs import ChoiceData, RetrievalData
from dla.data.tokens import Encoded, encode, length_sorted
from dla.device import autocast
from dla.train.tasks import EpochTask

CUTOFF = 10  # nDCG@10, MRR@10, Recall@10: what BEIR's leaderboard reports


# ------------------------------------------------------------------------------------------ metrics


def ranking_metrics(top: np.ndarray, relevant: list[tuple[int, ...]], k: int = CUTOFF) -> dict[str, float]:
    """Mean nDCG@k, MRR@k, Recall@1 and Recall@k (binary relevance) of ranked document rows `top` (queries x >= k)."""
    top = np.asarray(top)[:, :k]
    ndcg, mrr, r1, rk = [], [], [], []
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    for ranked, rel in zip(top, relevant):
        hits = np.isin(ranked, rel)
        ideal = discount[: min(len(rel), k)].sum()
        ndcg.append(float((discount * hits).sum() / ideal))
        first = np.flatnonzero(hits)
        mrr.append(1.0 / (first[0] + 1) if len(first) else 0.0)
        r1.append(float(hits[:1].sum()) / len(rel))
        rk.append(float(hits.sum()) / len(rel))
    return {"ndcg10": float(np.mean(ndcg)), "mrr10": float(np.mean(mrr)), "recall1": float(np.mean(r1)),
            "recall10": float(np.mean(rk))}


def top_documents(queries: torch.Tensor, docs: torch.Tensor, k: int = CUTOFF, chunk: int = 1024) -> np.ndarray:
    """The rows of the `k` documents of highest dot product with each query, best first."""
    k = min(k, len(docs))
    out = [torch.topk(queries[i:i + chunk] @ docs.T, k, dim=1).indices for i in range(0, len(queries), chunk)]
    return torch.cat(out).cpu().numpy()


def in_batch_negatives_loss(q: torch.Tensor, d: torch.Tensor, scale: float) -> torch.Tensor:
    """Cross-entropy of each query's own document (row i) against every document of the batch, on scaled cosines."""
    scores = scale * q @ d.T
    return F.cross_entropy(scores, torch.arange(len(q), device=q.device))


def margin_choice_loss(scores: torch.Tensor, answers: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean over questions and wrong options of max(0, margin - (right score - wrong score))."""
    right = scores.gather(1, answers[:, None])
    wrong = torch.ones_like(scores, dtype=torch.bool).scatter_(1, answers[:, None], False)
    return F.relu(margin - right + scores)[wrong].mean()


def bm25_top(corpus: list[str], queries: list[str], k: int = CUTOFF) -> np.ndarray:
    """BM25 (bm25s: English stop words, Snowball stemmer when PyStemmer is installed) top-k rows for each query."""
    import bm25s

    try:
        import Stemmer

        stemmer = Stemmer.Stemmer("english")
    except ImportError:
        stemmer = None
    index = bm25s.BM25()
    index.index(bm25s.tokenize(corpus, stopwords="en", stemmer=stemmer, show_progress=False), show_progress=False)
    tokens = bm25s.tokenize(queries, stopwords="en", stemmer=stemmer, show_progress=False)
    rows, _ = index.retrieve(tokens, k=min(k, len(corpus)), show_progress=False, n_threads=0)
    return np.asarray(rows)


# ------------------------------------------------------------------------------------------ encoding


def embed_rows(model: nn.Module, enc: Encoded, rows: np.ndarray, batch_size: int, accelerator: Accelerator,
               precision: str) -> torch.Tensor:
    """The model's vectors of `rows` of `enc`, in that order: each process encodes every world-th length-sorted
    batch, and the vectors are gathered (a single process encodes them all)."""
    model = getattr(model, "module", model)  # not the DDP wrapper: its forward syncs buffers, and shares differ in size
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    order = rows[np.argsort(enc.lengths[rows], kind="stable")]
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    mine = batches[rank::world]
    parts = []
    with torch.inference_mode(), autocast(device, precision):
        for index in mine:
            parts.append(model(**enc.batch(index, device)).float())
    width = parts[0].shape[1] if parts else model(**enc.batch(order[:1], device)).shape[1]
    local = torch.cat(parts) if parts else torch.zeros(0, width, device=device)
    if world > 1:
        per = max(len(b) for b in batches) * math.ceil(len(batches) / world)
        padded = torch.zeros(per, width, device=device)
        padded[: len(local)] = local
        gathered = accelerator.gather(padded).view(world, per, width)
        local = torch.cat([gathered[r, : sum(len(b) for b in batches[r::world])] for r in range(world)])
        order = np.concatenate([np.concatenate(batches[r::world]) for r in range(world) if batches[r::world]])
    out = torch.empty(len(rows), local.shape[1], device=device)
    where = {int(r): i for i, r in enumerate(rows)}
    out[torch.as_tensor([where[int(r)] for r in order], device=device)] = local
    return out


# ------------------------------------------------------------------------------------------ retrieval


class RetrievalTask(EpochTask):
    """Fine-tuning a bi-encoder on (query, its document) pairs with in-batch negatives."""

    metrics = ("ndcg10", "mrr10", "recall1", "recall10")

    def __init__(self, data: RetrievalData, tokenizer: Any, query_length: int, doc_length: int,
                 frozen: Callable[[], nn.Module] | None, scale: float, group_by_length: bool = True):
        self.data, self.tokenizer, self.frozen, self.scale = data, tokenizer, frozen, scale
        self.group = group_by_length
        self.queries = {s: encode(tokenizer, q.texts, query_length) for s, q in data.queries.items()}
        self.corpus = encode(tokenizer, data.corpus, doc_length)
        self.positives = np.asarray([rel[0] for rel in data.queries["train"].relevant])
        self.baselines: dict[str, dict[str, float]] = {}  # bm25 and frozen: their test metrics
        self.timing: dict[str, float] = {}
        self.test_corpus: torch.Tensor | None = None  # the corpus vectors of the test pass (kept by the kind)
        self.test_metrics: dict[str, float] = {}

    def train_size(self) -> int:
        return len(self.positives)

    def batches(self, cfg, generator, accelerator, steps) -> Iterator[Any]:
        """Shuffled batches of (query, document) pairs grouped by document length (`data.group_by_length`),
        so that padding to the longest document wastes little; the last partial batch is dropped."""
        device = accelerator.device
        for rows in self.epoch_rows(self.corpus.lengths[self.positives], cfg, generator, accelerator, steps):
            yield self.queries["train"].batch(rows, device), self.corpus.batch(self.positives[rows], device)

    def step(self, model, batch, cfg, unwrapped, generator):
        queries, docs = batch
        with autocast(queries["input_ids"].device, cfg.precision):
            q, d = model(**queries), model(**docs)
        loss = in_batch_negatives_loss(q.float(), d.float(), self.scale)
        with torch.no_grad():
            correct = ((q.float() @ d.float().T).argmax(1) == torch.arange(len(q), device=q.device)).sum()
        n = torch.tensor(float(len(q)), device=q.device)
        return loss, {"loss": loss.detach() * n, "correct": correct.to(n.dtype), "n": n}

    def _top(self, model, split, accelerator, cfg, docs: np.ndarray) -> np.ndarray:
        q = embed_rows(model, self.queries[split], np.arange(len(self.queries[split].ids)), cfg.eval_batch_size,
                       accelerator, cfg.precision)
        d = embed_rows(model, self.corpus, docs, cfg.eval_batch_size, accelerator, cfg.precision)
        return docs[top_documents(q, d)]

    def evaluate(self, model, split, accelerator, cfg):
        model.eval()
        docs = self.data.val_docs if split == "val" and self.data.val_docs is not None else np.arange(len(self.corpus.ids))
        return ranking_metrics(self._top(model, split, accelerator, cfg, docs), self.data.queries[split].relevant)

    def test(self, model, accelerator, cfg):
        model.eval()
        relevant, n = self.data.queries["test"].relevant, len(self.data.queries["test"])
        docs = np.arange(len(self.corpus.ids))
        start = time.perf_counter()
        d = embed_rows(model, self.corpus, docs, cfg.eval_batch_size, accelerator, cfg.precision)
        self.timing["corpus_encode_s"] = time.perf_counter() - start
        start = time.perf_counter()
        q = embed_rows(model, self.queries["test"], np.arange(n), cfg.eval_batch_size, accelerator, cfg.precision)
        top = top_documents(q, d)
        self.timing["queries_per_s"] = n / (time.perf_counter() - start)
        self.test_corpus = d
        result = self.test_metrics = ranking_metrics(top, relevant)
        if self.frozen is not None:
            start = time.perf_counter()
            self.baselines["bm25"] = ranking_metrics(bm25_top(self.data.corpus, self.data.queries["test"].texts), relevant)
            self.baselines["bm25"]["seconds"] = time.perf_counter() - start
            frozen = self.frozen().to(accelerator.device).eval()
            self.baselines["frozen"] = ranking_metrics(self._top(frozen, "test", accelerator, cfg, docs), relevant)
        return result

    def summary(self, history):
        flat = {f"{name}_{k}": v for name, values in self.baselines.items() for k, v in values.items()}
        return {"splits": self.data.describe(), "data_files": self.data.extra, **flat,
                **{k: round(v, 3) for k, v in self.timing.items()}}


# ------------------------------------------------------------------------------------------ multiple choice


class ChoiceTask(EpochTask):
    """Choosing the right option for a context: scores of (context, option) pairs, one question per row."""

    metrics = ("loss", "acc")

    def __init__(self, data: ChoiceData, tokenizer: Any, max_length: int, pairs: bool, loss: str, margin: float,
                 frozen: Callable[[], nn.Module] | None, group_by_length: bool = True):
        self.group = group_by_length
        self.data, self.n, self.pairs, self.loss, self.margin, self.frozen = data, data.n_options, pairs, loss, margin, frozen
        self.tokenizer, self.max_length = tokenizer, max_length
        self.encoded = {s: self._encode(c, pairs) for s, c in data.splits.items()}
        self.answers = {s: torch.from_numpy(c.answers) for s, c in data.splits.items()}
        self.baselines: dict[str, float] = {}

    def _encode(self, choices, pairs: bool) -> dict[str, Encoded]:
        flat = [o for opts in choices.options for o in opts]
        if pairs:  # [CLS] context [SEP] option [SEP], the context truncated first
            contexts = [c for c in choices.contexts for _ in range(self.n)]
            enc = self.tokenizer(contexts, flat, truncation="longest_first", max_length=self.max_length)
            pad = self.tokenizer.pad_token_id or 0
            return {"pairs": Encoded([list(x) for x in enc["input_ids"]], int(pad),
                                     [list(x) for x in enc["token_type_ids"]] if "token_type_ids" in enc else None)}
        return {"context": encode(self.tokenizer, choices.contexts, self.max_length),
                "options": encode(self.tokenizer, flat, self.max_length)}

    def _batch(self, split: str, rows: np.ndarray, device) -> dict[str, Any]:
        enc = self.encoded[split]
        options = (rows[:, None] * self.n + np.arange(self.n)).reshape(-1)
        if self.pairs:
            return {"pairs": enc["pairs"].batch(options, device), "n_options": self.n}
        return {"context": enc["context"].batch(rows, device), "options": enc["options"].batch(options, device),
                "n_options": self.n}

    def train_size(self) -> int:
        return len(self.answers["train"])

    def attach(self, model: nn.Module) -> None:
        """Count the weights training changes: the ranker's head alone, the whole encoder when fine-tuned."""
        self.trainable_params = sum(p.numel() for p in model.parameters() if p.requires_grad)

    def _lengths(self, split: str) -> np.ndarray:
        """Each question's padded width: its context's length, or its longest (context, option) pair."""
        if self.pairs:
            return self.encoded[split]["pairs"].lengths.reshape(-1, self.n).max(1)
        return self.encoded[split]["context"].lengths

    def batches(self, cfg, generator, accelerator, steps):
        """Shuffled batches of questions, grouped by length (`data.group_by_length`); the last partial one dropped."""
        device = accelerator.device
        for rows in self.epoch_rows(self._lengths("train"), cfg, generator, accelerator, steps):
            yield self._batch("train", rows, device), self.answers["train"][rows].to(device)

    def _loss(self, scores: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
        if self.loss == "margin":
            return margin_choice_loss(scores, answers, self.margin)
        return F.cross_entropy(scores, answers)

    def step(self, model, batch, cfg, unwrapped, generator):
        inputs, y = batch
        with autocast(y.device, cfg.precision):
            scores = model(**inputs).float()
        loss = self._loss(scores, y)
        n = torch.tensor(float(len(y)), device=y.device)
        return loss, {"loss": loss.detach() * n, "correct": (scores.detach().argmax(1) == y).sum().to(n.dtype), "n": n}

    @torch.inference_mode()
    def evaluate(self, model, split, accelerator, cfg):
        model.eval()
        model = getattr(model, "module", model)  # not the DDP wrapper: the processes make different numbers of calls
        device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
        answers = self.answers[split]
        lengths = self._lengths(split)
        sums = torch.zeros(3, dtype=torch.float64, device=device)
        for i, rows in enumerate(length_sorted(lengths, max(1, cfg.eval_batch_size // self.n))):
            if i % world != rank:
                continue
            y = answers[rows].to(device)
            with autocast(device, cfg.precision):
                scores = model(**self._batch(split, rows, device)).float()
            sums += torch.stack([self._loss(scores, y) * len(y), (scores.argmax(1) == y).sum(),
                                 torch.tensor(len(y), device=device)]).double()
        if world > 1:
            sums = accelerator.reduce(sums, reduction="sum")
        return {"loss": float(sums[0] / sums[2]), "acc": float(sums[1] / sums[2])}

    def test(self, model, accelerator, cfg):
        result = self.evaluate(model, "test", accelerator, cfg)
        self.test_acc = result["acc"]
        if self.frozen is not None:
            self.baselines = {"frozen_cosine_acc": self.frozen_cosine(accelerator, cfg), "chance_acc": 1 / self.n}
        return result

    def frozen_cosine(self, accelerator, cfg) -> float:
        """Accuracy of the untrained encoder's cosine between the context and each option (mean-pooled)."""
        encoder = self.frozen().to(accelerator.device).eval()
        choices = self.data.splits["test"]
        enc = self.encoded["test"] if not self.pairs else self._encode(choices, pairs=False)
        u = embed_rows(encoder, enc["context"], np.arange(len(choices)), cfg.eval_batch_size, accelerator, cfg.precision)
        v = embed_rows(encoder, enc["options"], np.arange(len(choices) * self.n), cfg.eval_batch_size, accelerator,
                       cfg.precision).view(len(choices), self.n, -1)
        picked = (v @ u[:, :, None]).squeeze(-1).argmax(1).cpu()
        return float((picked == self.answers["test"]).double().mean())

    def summary(self, history):
        return {"splits": self.data.describe(), "options": self.n, "data_files": self.data.extra,
                "trainable_params": getattr(self, "trainable_params", None), **self.baselines}
