"""The retriever kind (Lab 2, exercise 3.3): a bi-encoder that ranks documents for a query.

Offline: AG News, an article's title as the query and its own description among all 7,600 as the
answer (`lab2-retrieval`); online: a BEIR set, SciFact by default (`lab2-retrieval-scifact`).
The model (`hf-bi-encoder`) is fine-tuned with in-batch negatives on the one loop; its test pass
also scores BM25 and the frozen encoder on the same queries, and keeps the corpus vectors in the
run (`corpus.npy`) so that `dla retrieve RUN "query"` (`dla.build.retrieve_from_run`) answers at once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dla.config import RetrievalDataConfig
from dla.errors import ConfigError
from dla.kind import Column, RunKind, register_kind

RETRIEVER = "retriever"
SYSTEMS = (("BM25", "bm25"), ("frozen encoder", "frozen"), ("fine-tuned", None))
METRICS = (("nDCG@10", "ndcg10"), ("MRR@10", "mrr10"), ("Recall@1", "recall1"), ("Recall@10", "recall10"))


@register_kind
class Retriever(RunKind):
    name = RETRIEVER
    title = "retrieval model"
    data_config = RetrievalDataConfig
    models = ("hf-bi-encoder",)
    commands = frozenset({"dla retrieve"})
    table_columns = (("run", "name", "str"), ("data", "data", "str"), ("test nDCG@10", "test_ndcg10", "float"),
                     ("test MRR@10", "test_mrr10", "float"), ("test R@1", "test_recall1", "float"),
                     ("test R@10", "test_recall10", "float"), ("BM25 nDCG@10", "bm25_ndcg10", "float"),
                     ("frozen nDCG@10", "frozen_ndcg10", "float"), ("time (s)", "train_time_s", "time"))
    sweep_columns = (("Run", "name", "str"), ("test nDCG@10", "test_ndcg10", "float"),
                     ("test R@1", "test_recall1", "float"), ("best epoch", "best_epoch", "int"),
                     ("time (s)", "train_time_s", "time"))
    report_columns = (Column("test nDCG@10", "test_ndcg10", "float", True), Column("test MRR@10", "test_mrr10", "float", True),
                      Column("test Recall@1", "test_recall1", "float", True),
                      Column("test Recall@10", "test_recall10", "float", True),
                      Column("BM25 nDCG@10", "bm25_ndcg10", "float", True),
                      Column("frozen nDCG@10", "frozen_ndcg10", "float", True),
                      Column("train time (s)", "train_time_s", "time"))
    fallback = Column("best val nDCG@10", "best_val_ndcg10", "float", True)
    curve_metrics = ("val_ndcg10", "val_recall1")

    def check(self, cfg):
        super().check(cfg)
        if not cfg.train.monitor.removeprefix("val_") in ("ndcg10", "mrr10", "recall1", "recall10"):
            raise ConfigError(f"train.monitor: a retrieval model is monitored by val_ndcg10, val_mrr10, val_recall1 "
                              f"or val_recall10, not {cfg.train.monitor}")
        if cfg.train.adversarial != "none" or cfg.train.label_smoothing:
            raise ConfigError("train.adversarial and train.label_smoothing are for classifiers, not a retrieval model")

    def load_data(self, cfg, data_root, run=None, quiet=False):
        from dla.data.textpairs import load_retrieval

        data = load_retrieval(cfg.data, data_root)
        if not quiet:
            print(f"data: {data.source}; " + ", ".join(f"{k} {v}" for k, v in data.describe().items()))
        return data

    def make_task(self, cfg, data):
        from dla.hub import pretrained_tokenizer
        from dla.models import MODELS
        from dla.train.textpairs import RetrievalTask

        n = len(data.queries["train"])
        if cfg.train.batch_size > n:
            raise ConfigError(f"train.batch_size={cfg.train.batch_size} exceeds the {n} training queries")
        if cfg.train.batch_size < 2:
            raise ConfigError("train.batch_size: in-batch negatives need at least 2 queries per batch")
        frozen = (lambda: MODELS["hf-bi-encoder"].build(cfg.model, (), 0)) if cfg.data.baselines else None
        return RetrievalTask(data, pretrained_tokenizer(cfg.model.pretrained), cfg.data.query_length,
                             cfg.data.doc_length, frozen, cfg.model.scale, cfg.data.group_by_length)

    def build_model(self, cfg):
        from dla.models import MODELS

        return MODELS[cfg.model.name].build(cfg.model, (), 0)

    def finish(self, model, run, cfg, task, tracker, step):
        """The corpus vectors of the best weights (`corpus.npy`, for `dla retrieve`) and the comparison plot."""
        from dla.io import atomic_write
        from dla.manifest import PLOTS_TITLE, write_manifest
        from dla.report.plots import plot_bars

        vectors = task.test_corpus.cpu().numpy().astype(np.float16)

        def save(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.save(fh, vectors)

        atomic_write(run.path / "corpus.npy", save)
        groups = {}
        for label, key in SYSTEMS:
            values = task.baselines.get(key) if key else task.test_metrics
            if values:
                groups[label] = {name: values[m] for name, m in METRICS}
        plot_bars(groups, run.plots / "retrieval.png", f"{cfg.name}: {len(task.data.queries['test'])} test queries, "
                  f"{len(task.data.corpus)} documents", "score")
        write_manifest(run.plots, "plots", PLOTS_TITLE,
                       [{"file": "retrieval.png", "caption": "test ranking metrics: BM25, frozen and fine-tuned encoder"}])

    def eval_line(self, run, cfg, data, task, test):
        head = "  ".join(f"{name} {test[m]:.4f}" for name, m in METRICS)
        lines = [f"{run.path}: {data.source}: {len(data.queries['test'])} test queries: {head}"]
        for label, key in SYSTEMS[:2]:
            if key in task.baselines:
                lines.append(f"  {label}: " + "  ".join(f"{name} {task.baselines[key][m]:.4f}" for name, m in METRICS))
        return {f"{k}_{m}": v[m] for k, v in task.baselines.items() for _, m in METRICS}, "\n".join(lines)

