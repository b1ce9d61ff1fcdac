"""What fine-tuning, the frozen-feature baseline, `dla hf eval` and `dla predict` share: the data
and its token budget, classification metrics, the confusion-matrix plot and loading a fine-tuned run.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dla.errors import CheckpointError, ConfigError, DataError
from dla.hf.batching import Encoded, encode, run_encoder, token_lengths
from dla.hf.config import FinetuneConfig, load_run_config
from dla.hf.data import TopicData, load_topic_data, pick_max_length
from dla.hf.hub import load_tokenizer
from dla.io import atomic_write

MODEL_DIR = "model"  # inside a run: the fine-tuned weights (safetensors), config and tokenizer


@dataclass
class Prepared:
    tokenizer: Any
    data: TopicData
    max_length: int
    lengths: dict[str, float]  # the training texts' token-length distribution

    def encode(self, split: str) -> Encoded:
        return encode(self.tokenizer, getattr(self.data, split).texts, self.max_length)


def length_stats(lengths: np.ndarray, max_length: int) -> dict[str, float]:
    p50, p95, p99 = np.percentile(lengths, [50, 95, 99])
    return {"mean": float(lengths.mean()), "p50": float(p50), "p95": float(p95), "p99": float(p99),
            "max": int(lengths.max()), "truncated_frac": float((lengths > max_length).mean())}


def prepare(cfg: FinetuneConfig, data_root: Path | None, tokenizer: Any = None, quiet: bool = False) -> Prepared:
    """Tokenizer, split data and `max_length`: `data.max_length`, else the `data.length_percentile` of the
    training texts' token lengths (capped at the model's limit). Updates `cfg.data.max_length` so that
    the run's config.yaml records the value used."""
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.model.name)
    data = load_topic_data(cfg.data, data_root)
    lengths = token_lengths(tokenizer, data.train.texts)
    chosen = cfg.data.max_length or pick_max_length(lengths, cfg.data.length_percentile, tokenizer.model_max_length)
    stats = length_stats(lengths, chosen)
    if not quiet:
        print(f"data: {data.source}; " + ", ".join(f"{k} {v['size']} {v['per_class']}" for k, v in data.describe().items()))
        how = "set by data.max_length" if cfg.data.max_length else f"the {cfg.data.length_percentile:g}th percentile"
        print(f"max_length {chosen} tokens ({how}); training texts: mean {stats['mean']:.1f}, p50 {stats['p50']:.0f}, "
              f"p95 {stats['p95']:.0f}, p99 {stats['p99']:.0f}, max {stats['max']}; "
              f"{100 * stats['truncated_frac']:.1f}% truncated")
    cfg.data.max_length = chosen
    return Prepared(tokenizer, data, chosen, stats)


def metrics(labels: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """Cross-entropy, accuracy and macro-F1 (scikit-learn) of logits against labels."""
    from sklearn.metrics import accuracy_score, f1_score

    logp = torch.from_numpy(logits).float().log_softmax(1)
    loss = float(torch.nn.functional.nll_loss(logp, torch.from_numpy(labels)).item())
    pred = logits.argmax(1)
    return {"loss": loss, "acc": float(accuracy_score(labels, pred)),
            "f1": float(f1_score(labels, pred, average="macro", labels=np.arange(logits.shape[1]), zero_division=0))}


def classifier_logits(model: Any, data: Encoded, batch_size: int, device: torch.device, precision: str = "fp32",
                      desc: str = "eval") -> np.ndarray:
    was_training = model.training
    model.eval()
    try:
        return run_encoder(lambda b: model(**b).logits, data, batch_size, device, precision, desc)
    finally:
        model.train(was_training)


def plot_confusion(labels: np.ndarray, pred: np.ndarray, classes: tuple[str, ...], path: Path, title: str) -> Path:
    """Confusion matrix (rows: true class) with counts, as a PNG."""
    from sklearn.metrics import ConfusionMatrixDisplay

    from dla.report.plots import plt, save_figure

    fig, ax = plt.subplots(figsize=(1.6 + 0.9 * len(classes), 1.2 + 0.8 * len(classes)))
    ConfusionMatrixDisplay.from_predictions(labels, pred, labels=list(range(len(classes))), display_labels=classes,
                                            ax=ax, colorbar=False, xticks_rotation=45, cmap="Blues")
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def confusion_text(labels: np.ndarray, pred: np.ndarray, classes: tuple[str, ...]) -> str:
    from sklearn.metrics import confusion_matrix

    cm = confusion_matrix(labels, pred, labels=list(range(len(classes))))
    width = max(8, *(len(c) for c in classes))
    head = " " * width + " " + " ".join(f"{c[:8]:>8}" for c in classes)
    rows = [f"{c:>{width}} " + " ".join(f"{n:8d}" for n in row) for c, row in zip(classes, cm)]
    return "\n".join(["rows: true class, columns: predicted", head, *rows])


def device_for(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is available; use train.device=auto or cpu")
    return torch.device("cuda" if choice != "cpu" and torch.cuda.is_available() else "cpu")


def load_classifier(run_path: str | Path, device: torch.device | str = "cpu") -> tuple[Any, Any, FinetuneConfig]:
    """A fine-tuned run's model (eval mode), tokenizer and config."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    cfg = load_run_config(run_path)
    folder = Path(run_path) / MODEL_DIR
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{run_path} has no fine-tuned model ({folder} is missing): is it a features-baseline "
                              f"run or an unfinished one? Fine-tune with: dla hf finetune {cfg.name}")
    try:
        model = AutoModelForSequenceClassification.from_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{folder}: cannot load the fine-tuned model ({str(exc).splitlines()[0]})") from None
    return model.to(device).eval(), tokenizer, cfg


def class_names(model: Any) -> tuple[str, ...]:
    return tuple(model.config.id2label[i] for i in range(model.config.num_labels))


def evaluate_run(run_path: str | Path, data_root: Path | None) -> dict[str, Any]:
    """Test accuracy, macro-F1 and loss of a fine-tuned run on its test split; writes eval.json and
    plots/confusion.png into the run."""
    device = device_for("auto")
    model, tokenizer, cfg = load_classifier(run_path, device)
    summary_path = Path(run_path) / "summary.json"
    recorded = json.loads(summary_path.read_text()).get("data_files", {}) if summary_path.is_file() else {}
    if cfg.data.path is None and recorded.get("file") and Path(recorded["file"]).is_file():
        cfg.data.path = recorded["file"]  # the file the run was trained on, wherever this command runs
    prep = prepare(cfg, data_root, tokenizer, quiet=True)
    if recorded.get("md5") and prep.data.extra.get("md5") not in (None, recorded["md5"]):
        raise DataError(f"{prep.data.extra['file']} differs from the file the run was trained on "
                        f"({recorded.get('file')}, md5 {recorded['md5']}): its test split would not be the same")
    start = time.perf_counter()
    logits = classifier_logits(model, prep.encode("test"), cfg.train.eval_batch_size, device, cfg.train.precision, "test")
    seconds = time.perf_counter() - start
    labels = prep.data.test.labels
    result = {"run": str(run_path), "data": prep.data.source, "n": len(labels),
              **{f"test_{k}": v for k, v in metrics(labels, logits).items()}, "eval_time_s": seconds}
    pred = logits.argmax(1)
    classes = class_names(model)
    plot = plot_confusion(labels, pred, classes, Path(run_path) / "plots" / "confusion.png",
                          f"{cfg.name}: test acc {100 * result['test_acc']:.2f}%, macro-F1 {result['test_f1']:.4f}")
    result["confusion"] = str(plot)
    result["confusion_text"] = confusion_text(labels, pred, classes)
    text = json.dumps({k: v for k, v in result.items() if k != "confusion_text"}, indent=2) + "\n"
    atomic_write(Path(run_path) / "eval.json", lambda tmp: tmp.write_text(text))
    return result


def predict_texts(run_path: str | Path, texts: list[str], top_k: int = 3) -> list[list[tuple[str, float]]]:
    """For each text, the `top_k` topics of a fine-tuned run with their probabilities."""
    model, tokenizer, cfg = load_classifier(run_path)
    classes = class_names(model)
    enc = tokenizer(texts, truncation=True, max_length=cfg.data.max_length or 512, padding=True, return_tensors="pt")
    with torch.inference_mode():
        probs = model(**enc).logits.float().softmax(1)
    top = probs.topk(min(top_k, len(classes)), dim=1)
    return [[(classes[i], float(p)) for p, i in zip(vals, idx)] for vals, idx in zip(top.values.tolist(), top.indices.tolist())]
