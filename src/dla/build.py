"""From a config to the things it names: its run kind, data, class names and model, and a run's model.

Training (`dla.experiment`) and every later step (`eval`, `predict`, `generate`, `ood`, `attack`,
CAM) build through here, so a run is always rebuilt exactly as it was trained. What differs between
kinds of run lives in the kind (`dla.kind`); this module asks it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from dla.config import ExperimentConfig, load_run_config
from dla.data.text import load_tokenizer
from dla.data.vision import input_shape
from dla.errors import CheckpointError, DlaError
from dla.generation import default_prompt, stream_text
from dla.kind import kind_of, require_command
from dla.rundir import RunDir
from dla.train.checkpoint import load_weights

__all__ = ["class_names", "describe_data", "input_shape", "kind_of", "load_data", "load_run_model", "model_for",
           "open_run"]


def class_names(cfg: ExperimentConfig) -> tuple[str, ...]:
    """The names of the classes a run's model predicts, in output order."""
    return kind_of(cfg).class_names(cfg)


def model_for(cfg: ExperimentConfig) -> torch.nn.Module:
    """The model `cfg` describes, freshly initialised (a pretrained encoder: with its pretrained weights)."""
    kind = kind_of(cfg)
    kind.check(cfg)
    return kind.build_model(cfg)


def load_data(cfg: ExperimentConfig, data_root: Path | None, run: RunDir | None = None, quiet: bool = False) -> Any:
    """The data a config trains on (the kind's: `ImageData`, `TextData`, `TopicInputs`, ...); `run`: an
    existing run whose saved state (a language model's tokenizer) is reused."""
    return kind_of(cfg).load_data(cfg, data_root, run, quiet)


def describe_data(cfg: ExperimentConfig, data: Any) -> str:
    return kind_of(cfg).describe_data(data)


def open_run(path: str | Path, command: str | None = None) -> tuple[RunDir, ExperimentConfig]:
    """A run directory and its config; with `command`, a run of a kind that takes that command."""
    run = RunDir.open(path)
    cfg = load_run_config(run)
    if command is not None:
        require_command(cfg, command, run.path)
    return run, cfg


def load_run_model(run: RunDir, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, ExperimentConfig]:
    """The model of a run with its best weights, in eval mode."""
    cfg = load_run_config(run)
    if not run.best_weights.is_file():
        raise CheckpointError(f"{run.path} has no trained weights ({run.best_weights} is missing): "
                              f"an unfinished run (dla train --resume {run.path}) or one that keeps no model")
    model = model_for(cfg)
    load_weights(model, run.best_weights)
    return model.to(device).eval(), cfg


def predict_run(path: str | Path, inputs: list[str], top_k: int = 3, invert: bool = False) -> tuple[Any, list]:
    """`dla predict`: the run's kind (its `predict_input` names what the inputs are) and, for each input,
    (input, how it is shown, [(class, probability), ...] best first) from the run's best weights."""
    if top_k < 1:
        raise DlaError(f"--top-k: must be >= 1, got {top_k}")
    run, cfg = open_run(path, "dla predict")
    model, cfg = load_run_model(run)
    kind = kind_of(cfg)
    return kind, kind.predict(model, cfg, run, inputs, top_k, invert)


def load_lm_run(run_path: str | Path, device: str = "cpu"):
    """(model with best weights, tokenizer, config) of a language-model run directory."""
    run, _ = open_run(run_path, "dla generate")
    model, cfg = load_run_model(run, device)
    return model, load_tokenizer(run.tokenizer), cfg


def generate_from_run(
    run_path: str | Path, prompt: str | None = None, max_new_tokens: int = 500, temperature: float = 0.8,
    top_k: int | None = 50, top_p: float | None = 0.95, seed: int | None = 0,
) -> Iterator[str]:
    """The prompt (default: the run's own, `\\n` read as a line break), then each generated piece as it is sampled.

    `dla generate RUN` and `dla hf generate --run RUN` both print exactly this stream.
    """
    model, tokenizer, cfg = load_lm_run(run_path)
    prompt = (prompt if prompt is not None else default_prompt(cfg)).replace("\\n", "\n")
    top_k = top_k if top_k and top_k > 0 else None
    tokenizer.encode(prompt)  # an unknown character fails here, before any output
    yield prompt
    yield from stream_text(model, tokenizer, prompt, max_new_tokens, temperature, top_k, top_p, seed)


def retrieve_from_run(path: str | Path, queries: list[str], k: int, data_root: Path | None = None) -> list[tuple[str, list]]:
    """`dla retrieve`: for each query, the run's top-k documents as (document id, score, text), best first."""
    import numpy as np

    from dla.data.textpairs import load_retrieval
    from dla.data.tokens import encode
    from dla.hub import pretrained_tokenizer

    if k < 1:
        raise DlaError(f"--k: must be >= 1, got {k}")
    empty = [q for q in queries if not q.strip()]
    if empty or not queries:
        raise DlaError("the query is empty: give the text to search for, e.g. dla retrieve RUN \"oil prices rise\"")
    run, cfg = open_run(path, "dla retrieve")
    stored = run.path / "corpus.npy"
    if not stored.is_file():
        raise DlaError(f"{run.path} has no corpus vectors ({stored.name}): an unfinished run; finish it with "
                       f"dla train --resume {run.path}")
    model, cfg = load_run_model(run)
    recorded = run.read_summary().get("data_files", {})
    if cfg.data.path is None and recorded.get("file") and Path(recorded["file"]).is_file():
        cfg.data.path = recorded["file"]
    data = load_retrieval(cfg.data, data_root)
    docs = torch.from_numpy(np.load(stored).astype(np.float32))
    if len(docs) != len(data.corpus):
        raise DlaError(f"{stored}: {len(docs)} vectors for a corpus of {len(data.corpus)} documents; the data changed "
                       f"since the run")
    enc = encode(pretrained_tokenizer(cfg.model.pretrained), queries, cfg.data.query_length)
    with torch.inference_mode():
        q = model(**enc.batch(range(len(queries))))
        top = torch.topk(q @ docs.T, min(k, len(docs)), dim=1)
    return [(query, [(data.doc_ids[i], float(s), data.corpus[i]) for s, i in zip(vals, idx)])
            for query, vals, idx in zip(queries, top.values.tolist(), top.indices.tolist())]
