"""Lab 2 exercises 3.2 (multiple choice) and 3.3 (retrieval): data, losses and metrics checked exactly,
and tiny runs of both kinds on the one engine (eval, resume, torchrun, dla retrieve)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import HF_OFFLINE as OFFLINE
from conftest import REPO, SHARED, need, torchrun

from dla import experiment
from dla.cli import main
from dla.config import load_experiment
from dla.data.textpairs import (
    article_retrieval,
    beir_retrieval,
    draw_distractors,
    read_articles,
    same_text_groups,
)
from dla.errors import DataError
from dla.rundir import RunDir
from dla.train.textpairs import (
    bm25_top,
    embed_rows,
    in_batch_negatives_loss,
    margin_choice_loss,
    ranking_metrics,
    top_documents,
)

AG_NEWS = SHARED / "ag_news" / "test.csv"
SUBPROCESS_ENV = {**OFFLINE, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}


pytestmark = pytest.mark.usefixtures("hf_offline", "one_thread")  # conftest: no Hub, tiny models on one thread


# ------------------------------------------------------------------------------------------ metrics


def test_ranking_metrics_of_a_hand_made_ranking():
    top = np.array([
        [7, 3, 5, 1, 2, 4, 6, 8, 9, 10],  # the relevant doc 3 at rank 2
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],  # doc 0 at rank 1 (and doc 42, also relevant, not in the top 10)
        [10, 11, 12, 13, 14, 15, 16, 17, 18, 19],  # doc 99 nowhere
        [5, 6, 8, 9, 1, 2, 3, 4, 0, 7],  # docs 8 and 1 at ranks 3 and 5
    ])
    relevant = [(3,), (0, 42), (99,), (1, 8)]
    m = ranking_metrics(top, relevant)
    ndcg = [1 / math.log2(3),
            1 / (1 + 1 / math.log2(3)),
            0.0,
            (1 / math.log2(4) + 1 / math.log2(6)) / (1 + 1 / math.log2(3))]
    assert m["ndcg10"] == pytest.approx(np.mean(ndcg), abs=1e-12)
    assert m["mrr10"] == pytest.approx(np.mean([1 / 2, 1, 0, 1 / 3]), abs=1e-12)
    assert m["recall1"] == pytest.approx(np.mean([0, 1 / 2, 0, 0]), abs=1e-12)
    assert m["recall10"] == pytest.approx(np.mean([1, 1 / 2, 0, 1]), abs=1e-12)


def test_ranking_metrics_agree_with_torchmetrics_on_random_scores():
    from torchmetrics.functional.retrieval import (
        retrieval_normalized_dcg,
        retrieval_precision,
        retrieval_reciprocal_rank,
        retrieval_recall,
    )

    rng = np.random.default_rng(0)
    scores = torch.from_numpy(rng.standard_normal((40, 60)))
    relevant = [tuple(sorted(rng.choice(60, size=int(rng.integers(1, 4)), replace=False).tolist())) for _ in range(40)]
    ours = ranking_metrics(top_documents(scores, torch.eye(60, dtype=scores.dtype)), relevant)
    target = torch.zeros(40, 60, dtype=torch.bool)
    for i, rel in enumerate(relevant):
        target[i, list(rel)] = True
    theirs = {
        "ndcg10": np.mean([float(retrieval_normalized_dcg(scores[i], target[i], top_k=10)) for i in range(40)]),
        "mrr10": np.mean([float(retrieval_reciprocal_rank(scores[i], target[i], top_k=10)) for i in range(40)]),
        "recall1": np.mean([float(retrieval_recall(scores[i], target[i], top_k=1)) for i in range(40)]),
        "recall10": np.mean([float(retrieval_recall(scores[i], target[i], top_k=10)) for i in range(40)]),
    }
    assert retrieval_precision(scores[0], target[0], top_k=10) >= 0  # the library is the one we think it is
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, abs=1e-6), key


def test_in_batch_negatives_loss_against_a_hand_computation():
    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(5, 8), dim=1)
    d = torch.nn.functional.normalize(torch.randn(5, 8), dim=1)
    expected = 0.0
    for i in range(5):
        sims = [20.0 * float(q[i] @ d[j]) for j in range(5)]
        expected += -(sims[i] - math.log(sum(math.exp(s) for s in sims))) / 5
    assert float(in_batch_negatives_loss(q, d, 20.0)) == pytest.approx(expected, rel=1e-5)


def test_margin_loss_against_a_hand_computation():
    scores = torch.tensor([[0.5, 2.0, 1.8, -1.0], [3.0, 0.0, 2.5, 2.9]])
    answers = torch.tensor([1, 0])
    wrong = [max(0, 1 - (2.0 - s)) for s in (0.5, 1.8, -1.0)] + [max(0, 1 - (3.0 - s)) for s in (0.0, 2.5, 2.9)]
    assert float(margin_choice_loss(scores, answers, 1.0)) == pytest.approx(sum(wrong) / 6)


def test_embed_rows_keeps_the_order_asked_for():
    from dla.data.tokens import Encoded

    class Sum(torch.nn.Module):
        def forward(self, input_ids, attention_mask):
            return (input_ids * attention_mask).sum(1, keepdim=True).float().repeat(1, 2)

    class One:
        device, process_index, num_processes = torch.device("cpu"), 0, 1

    enc = Encoded([[1] * n for n in (5, 1, 3, 7, 2, 4)], 0)
    rows = np.array([3, 0, 5, 1])
    out = embed_rows(Sum(), enc, rows, 3, One(), "fp32")
    assert out[:, 0].tolist() == [7, 5, 4, 1]


def test_bm25_finds_the_document_sharing_the_rare_words():
    pytest.importorskip("bm25s")
    corpus = ["Oil prices climb as supply tightens", "The team won the final", "Stocks fell on Wall Street",
              "A new comet was observed by astronomers"]
    top = bm25_top(corpus, ["comet astronomers", "oil supply"], k=2)
    assert top[:, 0].tolist() == [3, 0]


# ------------------------------------------------------------------------------------------ data


def test_read_articles_takes_ag_news_rows_or_a_header(tmp_path):
    rows = tmp_path / "rows.csv"
    rows.write_text('"3","Wall St. Bears","Short-sellers are back #36;10"\n"2","Win","The team won"\n')
    a = read_articles(rows)
    assert a.titles == ["Wall St. Bears", "Win"] and a.descriptions[0] == "Short-sellers are back $10"
    assert a.labels.tolist() == [2, 1] and a.classes[2] == "Business"
    headed = tmp_path / "headed.csv"
    headed.write_text("id,description,title,label\n1,Text one,Title one,b\n2,Text two,Title two,a\n")
    h = read_articles(headed)
    assert h.titles == ["Title one", "Title two"] and h.labels.tolist() == [1, 0] and h.classes == ("a", "b")
    plain = tmp_path / "plain.csv"
    plain.write_text("title,description\nT,D\n")
    assert read_articles(plain).labels.tolist() == [0]
    bad = tmp_path / "bad.csv"
    bad.write_text("headline,body\nT,D\n")
    with pytest.raises(DataError, match="no title and description columns"):
        read_articles(bad)
    empty = tmp_path / "empty.csv"
    empty.write_text('"1","","text"\n')
    with pytest.raises(DataError, match="article 1 has an empty title"):
        read_articles(empty)


def test_distractors_are_other_titles_of_the_same_topic():
    titles = [f"t{i}" for i in range(40)] + ["t0"]  # row 40 repeats row 0's title
    labels = np.array([i % 4 for i in range(40)] + [0])
    rows = np.arange(41)
    choices = draw_distractors(titles, labels, rows, 4, np.random.default_rng(0), ("a", "b", "c", "d"), "train")
    positions = set()
    for i, opts, answer in zip(rows, choices.options, choices.answers):
        assert len(opts) == 4 and len(set(opts)) == 4  # distinct texts
        assert opts[answer] == titles[i]
        others = [o for k, o in enumerate(opts) if k != answer]
        assert titles[i] not in others  # never the true title, even where another row has the same title
        assert all(labels[titles.index(o)] == labels[i] for o in others)  # the topic is kept
        positions.add(int(answer))
    assert positions == {0, 1, 2, 3}
    again = draw_distractors(titles, labels, rows, 4, np.random.default_rng(0), ("a", "b", "c", "d"), "train")
    assert again.options == choices.options  # seeded
    with pytest.raises(DataError, match="topic 'a' has 10 distinct titles in the test split, fewer than the 11"):
        draw_distractors(titles, labels, rows, 11, np.random.default_rng(0), ("a", "b", "c", "d"), "test")


def test_ag_news_retrieval_split_and_duplicate_descriptions():
    need(AG_NEWS, "the shared AG News test split")
    cfg = load_experiment("lab2-retrieval", [f"data.path={AG_NEWS}"]).data
    data = article_retrieval(cfg, None)
    assert len(data.corpus) == 7600 and [len(data.queries[s]) for s in ("train", "val", "test")] == [5600, 800, 1200]
    groups = same_text_groups(data.corpus)
    assert sum(len(g) > 1 for g in groups) == 12  # the 6 repeated descriptions, each twice
    for rel in data.queries["test"].relevant:
        assert all(data.corpus[r] == data.corpus[rel[0]] for r in rel)
    assert len(data.val_docs) >= 800 and set(data.val_docs) >= {r[0] for r in data.queries["val"].relevant}


def test_a_beir_folder_is_read_as_the_hub_set_would_be(tmp_path):
    folder = tmp_path / "tiny-beir"
    (folder / "qrels").mkdir(parents=True)
    docs = [{"_id": f"d{i}", "title": f"Title {i}", "text": f"text {i}"} for i in range(12)]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": f"query {i}"}) + "\n" for i in range(12)))
    (folder / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(10)))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq10\td10\t1\nq10\td3\t1\nq11\td11\t0\nq11\td2\t1\n")
    cfg = load_experiment("lab2-retrieval-scifact", [f"data.path={folder}", "data.val_queries=2"]).data
    data = beir_retrieval(cfg)
    assert data.corpus[0] == "Title 0 text 0" and len(data.corpus) == 12
    assert [len(data.queries[s]) for s in ("train", "val", "test")] == [8, 2, 2]
    assert data.queries["test"].texts == ["query 10", "query 11"]
    assert data.queries["test"].relevant == [(3, 10), (2,)]  # score 0 is not relevant
    with pytest.raises(DataError, match="not a BEIR folder"):
        beir_retrieval(load_experiment("lab2-retrieval-scifact", [f"data.path={tmp_path}"]).data)


@pytest.mark.parametrize("experiment_name, what", [("lab2-retrieval-scifact", "BeIR/scifact"),
                                                    ("lab2-multiple-choice-swag", "swag")])
def test_online_sets_offline_stop_with_one_line(experiment_name, what, tmp_path, capsys):
    pytest.importorskip("datasets")
    assert main(["train", experiment_name, f"runs_dir={tmp_path}/runs", "track.tracker=none"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and what in err[0] and "offline" in err[0], err
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------------------ tiny runs


def tiny(model) -> list[str]:
    return [f"data.path={AG_NEWS}", "data.split_sizes=[192,64,64]", f"model.pretrained={model}", "train.epochs=2",
            "train.batch_size=16", "optim.lr=1e-3", "seed=1", "track.tracker=none", "train.precision=fp32",
            "train.patience=null"]


RETRIEVAL_TINY = ["data.doc_length=48", "data.query_length=24", "train.eval_batch_size=512"]


@pytest.mark.slow
def test_tiny_retrieval_run_baselines_eval_and_retrieve(tiny_bert, tmp_path, capsys):
    need(AG_NEWS, "the shared AG News test split")
    pytest.importorskip("bm25s")
    cfg = load_experiment("lab2-retrieval", [*tiny(tiny_bert), *RETRIEVAL_TINY])
    run = experiment.train(cfg, None, quiet=True)
    s = run.read_summary()
    assert s["kind"] == "retriever" and s["steps"] == 2 * (192 // 16)
    for key in ("test_ndcg10", "test_mrr10", "test_recall1", "test_recall10", "bm25_ndcg10", "frozen_ndcg10"):
        assert 0 <= s[key] <= 1, key
    assert s["test_recall1"] <= s["test_mrr10"] <= s["test_recall10"]
    assert s["corpus_encode_s"] > 0 and s["queries_per_s"] > 0
    # BM25 needs no training: the run's number is BM25's on the same 64 test titles against all 7,600 descriptions.
    data = article_retrieval(cfg.data, None)
    assert s["bm25_ndcg10"] == pytest.approx(ranking_metrics(
        bm25_top(data.corpus, data.queries["test"].texts), data.queries["test"].relevant)["ndcg10"])
    for name in ("corpus.npy", "plots/retrieval.png", "plots/curves.png", "checkpoints/best.safetensors"):
        assert (run.path / name).is_file(), name
    result, _ = experiment.evaluate_run(run.path, None)
    assert result["test_ndcg10"] == pytest.approx(s["test_ndcg10"], abs=1e-6)  # the best weights, reloaded
    # dla retrieve ranks the stored corpus vectors with the best weights: a test title finds what the test pass found.
    capsys.readouterr()
    query = data.queries["test"].texts[0]
    assert main(["retrieve", str(run.path), query, "--k", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["query"] == query and len(out["top"]) == 3
    assert [t["score"] for t in out["top"]] == sorted((t["score"] for t in out["top"]), reverse=True)
    assert all(data.corpus[int(t["id"]) - 1] == t["text"] for t in out["top"])
    assert main(["retrieve", str(run.path), query, "--k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"query: {query}" and lines[1].startswith("  1. [") and len(lines) == 3


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lab2-multiple-choice", "lab2-multiple-choice-finetune"])
def test_tiny_multiple_choice_runs_and_eval(name, tiny_bert, capsys):
    need(AG_NEWS, "the shared AG News test split")
    cfg = load_experiment(name, [*tiny(tiny_bert), "data.max_length=64"])
    run = experiment.train(cfg, None, quiet=True)
    s = run.read_summary()
    assert s["kind"] == "multiple-choice" and s["options"] == 4 and s["chance_acc"] == 0.25
    assert 0 <= s["test_acc"] <= 1 and 0 <= s["frozen_cosine_acc"] <= 1
    assert s["steps"] == 2 * (192 // 16) and (run.path / "plots" / "choice.png").is_file()
    result, line = experiment.evaluate_run(run.path, None)
    assert result["test_acc"] == pytest.approx(s["test_acc"]) and "chance 0.2500" in line


def run_dla(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dla", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **SUBPROCESS_ENV})


@pytest.mark.slow
def test_retrieval_resumes_after_sigkill_to_the_same_result(tiny_bert, tmp_path):
    need(AG_NEWS, "the shared AG News test split")
    args = [*tiny(tiny_bert), *RETRIEVAL_TINY, "train.epochs=3", "data.baselines=false"]
    assert run_dla("train", "lab2-retrieval", *args, "run_name=straight").returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "dla", "train", "lab2-retrieval", *args, "run_name=killed"],
                            env={**os.environ, **SUBPROCESS_ENV}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed = RunDir(tmp_path / "runs" / "lab2-retrieval" / "killed")
    deadline = time.time() + 120
    while time.time() < deadline and not (killed.metrics.exists() and killed.metrics.read_text().count("\n") >= 1):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not killed.summary.exists() and 1 <= len(killed.read_metrics()) < 3
    resumed = run_dla("train", "--resume", str(killed.path))
    assert resumed.returncode == 0, resumed.stderr
    straight = RunDir(tmp_path / "runs" / "lab2-retrieval" / "straight")
    keys = ("step", "train_loss", "val_ndcg10", "val_mrr10")
    assert [[r[k] for k in keys] for r in killed.read_metrics()] == [[r[k] for k in keys] for r in straight.read_metrics()]
    assert killed.read_summary()["test_ndcg10"] == straight.read_summary()["test_ndcg10"]


@pytest.mark.slow
@pytest.mark.parametrize("name, metric", [("lab2-retrieval", "val_ndcg10"), ("lab2-multiple-choice-finetune", "val_acc")])
def test_text_pair_runs_under_torchrun_match_one_process(name, metric, tiny_bert, tmp_path):
    """Two gloo processes: each takes half of every batch (in-batch negatives of its half) and the corpus shards
    are gathered; the validation metric of the first epoch is the single process's where the losses agree."""
    need(AG_NEWS, "the shared AG News test split")
    size = "data.doc_length=48" if name == "lab2-retrieval" else "data.max_length=64"
    # all but equal weights in both (lr 1e-12): the sharded evaluation must give the same number
    args = [*tiny(tiny_bert), "train.epochs=1", "data.baselines=false", size, "optim.lr=1e-12", "optim.weight_decay=0"]
    torchrun("train", name, *args, "run_name=ddp", env={**os.environ, **SUBPROCESS_ENV},
             launch=("--master_port", "29541"))
    assert run_dla("train", name, *args, "run_name=single").returncode == 0
    ddp = RunDir(tmp_path / "runs" / name / "ddp").read_metrics()
    single = RunDir(tmp_path / "runs" / name / "single").read_metrics()
    assert ddp[0][metric] == pytest.approx(single[0][metric], abs=1e-6)
    assert RunDir(tmp_path / "runs" / name / "ddp").read_summary()["processes"] == 2
