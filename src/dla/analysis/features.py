"""Lab 2.3 baseline: the frozen pretrained encoder as a feature extractor (mean-pooled last hidden
states) and a scikit-learn logistic regression on top; the number fine-tuning has to beat.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dla.build import class_names, load_data
from dla.config import ExperimentConfig, to_dict
from dla.device import make_accelerator
from dla.errors import ConfigError
from dla.kind import kinds_for
from dla.data.tokens import Encoded, run_encoder
from dla.hub import load_pretrained
from dla.models.textpairs import mean_pool
from dla.report.plots import plot_confusion
from dla.rundir import RunDir


def metrics(labels: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """Cross-entropy, accuracy and macro-F1 (scikit-learn) of logits against labels."""
    from sklearn.metrics import accuracy_score, f1_score

    logp = torch.from_numpy(logits).float().log_softmax(1)
    loss = float(torch.nn.functional.nll_loss(logp, torch.from_numpy(labels)).item())
    pred = logits.argmax(1)
    return {"loss": loss, "acc": float(accuracy_score(labels, pred)),
            "f1": float(f1_score(labels, pred, average="macro", labels=np.arange(logits.shape[1]), zero_division=0))}


def load_encoder(name: str) -> Any:
    """The pretrained encoder without a head (AutoModel), in eval mode."""
    from transformers import AutoModel

    return load_pretrained(AutoModel.from_pretrained, name, "model").eval()


def embed(encoder: Any, data: Encoded, batch_size: int, device: torch.device, precision: str = "fp32",
          desc: str = "embed") -> np.ndarray:
    """Mean-pooled last-layer embeddings of every row, (n, hidden)."""
    return run_encoder(lambda b: mean_pool(encoder(**b).last_hidden_state, b["attention_mask"]),
                       data, batch_size, device, precision, desc)


def fit_logistic(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                 c_grid: list[float], max_iter: int, seed: int) -> tuple[Any, list[dict[str, float]]]:
    """Standardised features + logistic regression for each C; the best on validation accuracy and the grid."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    best, grid = None, []
    for c in c_grid:
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter, random_state=seed))
        clf.fit(x_train, y_train)
        m = metrics(y_val, clf.decision_function(x_val))  # logits: log_softmax of them stays finite
        grid.append({"C": c, "val_acc": m["acc"], "val_f1": m["f1"], "val_loss": m["loss"]})
        if best is None or m["acc"] > best[1]:
            best = (clf, m["acc"])
    assert best is not None
    return best[0], grid


def features_baseline(cfg: ExperimentConfig, data_root: Path | None = None, quiet: bool = False) -> RunDir:
    """Embed train/val/test with the frozen encoder, fit the classifier, score the test split.

    Writes `runs/<experiment>-features/<run>/` with config.yaml, summary.json and plots/confusion.png.
    """
    import transformers
    from sklearn.metrics import confusion_matrix

    if cfg.kind not in kinds_for("dla hf features-baseline"):
        raise ConfigError(f"{cfg.name} is not a text-classification experiment (data.name=ag_news or "
                          f"yahoo_answers_topics); the frozen-feature baseline needs one")
    say = (lambda *a: None) if quiet else print
    device = make_accelerator(cfg.train).device
    inputs = load_data(cfg, data_root, quiet=quiet)
    data = inputs.data
    pretrained = cfg.model.pretrained
    encoder = load_encoder(pretrained).to(device)
    run = RunDir.create(RunDir.new_path(cfg.runs_dir, cfg.name + "-features", cfg.run_name), to_dict(cfg))
    start = time.perf_counter()
    feats, tokens = {}, 0
    for split in ("train", "val", "test"):
        enc = inputs.encode(split)
        tokens += int(enc.lengths.sum())
        feats[split] = embed(encoder, enc, cfg.train.eval_batch_size, device, cfg.train.precision, f"embed {split}")
    embed_time = time.perf_counter() - start
    say(f"embedded {sum(len(f) for f in feats.values())} texts with the frozen {pretrained} in {embed_time:.0f}s "
        f"({tokens / embed_time:.0f} tokens/s)")
    start = time.perf_counter()
    clf, grid = fit_logistic(feats["train"], data.train.labels, feats["val"], data.val.labels,
                             cfg.baseline.c_grid, cfg.baseline.max_iter, cfg.seed)
    fit_time = time.perf_counter() - start
    test_logits = clf.decision_function(feats["test"])
    test_m = metrics(data.test.labels, test_logits)
    best_c = clf[-1].C
    classes = class_names(cfg)
    confusion = confusion_matrix(data.test.labels, test_logits.argmax(1), labels=list(range(len(classes))))
    plot_confusion(confusion, classes, run.plots / "confusion.png",
                   f"frozen {pretrained} + logistic regression: test acc {100 * test_m['acc']:.2f}%")
    summary = {
        "experiment": cfg.name + "-features", "run": run.name, "kind": "features-baseline", "status": "completed",
        "model": pretrained,
        "method": "frozen encoder, mean-pooled last hidden states, standardised, logistic regression (C on val)",
        "data": data.source, "splits": data.describe(), "data_files": data.extra, "classes": list(classes),
        "max_length": inputs.max_length, "token_lengths": inputs.lengths, "feature_dim": int(feats["train"].shape[1]),
        "c_grid": grid, "best_C": best_c, "val_acc": max(g["val_acc"] for g in grid),
        "test_loss": test_m["loss"], "test_acc": test_m["acc"], "test_f1": test_m["f1"],
        "embed_time_s": embed_time, "embed_tokens_per_s": tokens / embed_time, "fit_time_s": fit_time,
        "train_time_s": embed_time + fit_time, "device": str(device), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "transformers": transformers.__version__,
    }
    run.write_summary(summary)
    say("C grid (validation accuracy): " + ", ".join(f"C={g['C']:g} {g['val_acc']:.4f}" for g in grid))
    say(f"baseline test acc {test_m['acc']:.4f}  macro-F1 {test_m['f1']:.4f}  (C={best_c:g}); wrote {run.path}")
    return run
