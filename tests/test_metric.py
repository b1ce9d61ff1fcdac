"""Metric learning (the "Siamese models" exercise): the triplet loss, mining and retrieval metrics, checked by hand
and against pytorch-metric-learning on the same inputs; few-shot by nearest class mean; a tiny run."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from dla import experiment
from dla.config import load_experiment
from dla.train.metric import few_shot_accuracy, retrieval_metrics, semi_hard_triplets, triplet_loss


def test_the_triplet_loss_on_hand_made_embeddings():
    # unit vectors at angles 0, 0.3 (same class A) and 0.4 (class B): d = 2 sin(angle / 2)
    angles = torch.tensor([0.0, 0.3, 0.4])
    e = torch.stack([torch.cos(angles), torch.sin(angles)], 1)
    y = torch.tensor([0, 0, 1])
    d = lambda a, b: 2 * math.sin(abs(a - b) / 2)  # noqa: E731
    margin = 0.2
    a, p, n = semi_hard_triplets(e, y, margin)
    # anchor 0: d(0, 1) = 0.299 < d(0, 2) = 0.397, within the margin: semi-hard; anchor 1: d(1, 0) = 0.299 >
    # d(1, 2) = 0.0999: a hard triplet, not mined
    assert (a.tolist(), p.tolist(), n.tolist()) == ([0], [1], [2])
    loss, mined = triplet_loss(e, y, margin)
    assert mined == 1 and loss.item() == pytest.approx(d(0, 0.3) - d(0, 0.4) + margin, abs=1e-6)
    far = torch.stack([torch.cos(torch.tensor([0.0, 0.3, 3.0])), torch.sin(torch.tensor([0.0, 0.3, 3.0]))], 1)
    loss, mined = triplet_loss(far, y, margin)  # the negative beyond the margin: nothing to learn
    assert mined == 0 and loss.item() == 0


def test_mining_and_loss_equal_pytorch_metric_learning():
    pml = pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning.losses import TripletMarginLoss
    from pytorch_metric_learning.miners import TripletMarginMiner

    g = torch.Generator().manual_seed(0)
    e = F.normalize(torch.randn(48, 8, generator=g), dim=1)
    y = torch.randint(0, 4, (48,), generator=g)
    miner = TripletMarginMiner(margin=0.3, type_of_triplets="semihard")
    theirs = miner(e, y)
    ours = semi_hard_triplets(e, y, 0.3)
    assert sorted(zip(*[t.tolist() for t in theirs])) == sorted(zip(*[t.tolist() for t in ours]))
    expected = TripletMarginLoss(margin=0.3)(e, y, theirs)
    assert triplet_loss(e, y, 0.3)[0].item() == pytest.approx(expected.item(), rel=1e-5)
    assert pml.__version__


def test_retrieval_metrics_by_hand_and_against_the_accuracy_calculator():
    # one query of class 0; gallery classes by rank: 0, 1, 0 (R = 2): P@1 = 1, MAP@R = (1 + 0) / 2
    q = torch.tensor([[1.0, 0.0]])
    g = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.5, 0.5], [-1.0, 0.0]])
    m = retrieval_metrics(q, torch.tensor([0]), g, torch.tensor([0, 1, 0, 1]))
    assert m == {"precision1": 1.0, "map_r": 0.5}
    m = retrieval_metrics(q, torch.tensor([1]), g, torch.tensor([0, 1, 0, 1]))  # ranks 2 and 4 of R = 2: (0 + 1/2) / 2
    assert m == {"precision1": 0.0, "map_r": 0.25}
    pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning.distances import CosineSimilarity
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN

    gen = torch.Generator().manual_seed(1)
    centres = torch.randn(5, 16, generator=gen)
    gy, qy = torch.randint(0, 5, (300,), generator=gen), torch.randint(0, 5, (80,), generator=gen)
    gallery = centres[gy] + 0.9 * torch.randn(300, 16, generator=gen)
    queries = centres[qy] + 0.9 * torch.randn(80, 16, generator=gen)
    calc = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r"), k="max_bin_count",
                              knn_func=CustomKNN(CosineSimilarity()))
    ref = calc.get_accuracy(queries, qy, gallery, gy, ref_includes_query=False)
    ours = retrieval_metrics(queries, qy, gallery, gy, chunk=16)
    assert ours["precision1"] == pytest.approx(ref["precision_at_1"], abs=1e-6)
    assert ours["map_r"] == pytest.approx(ref["mean_average_precision_at_r"], abs=1e-6)


def test_few_shot_by_nearest_class_mean():
    # two well-separated classes: every query is right whatever the support; one class mixed in: about half
    e = torch.cat([torch.tensor([[1.0, 0.0]]).repeat(10, 1), torch.tensor([[0.0, 1.0]]).repeat(10, 1)])
    y = torch.tensor([3] * 10 + [7] * 10)
    assert few_shot_accuracy(e + 0.01 * torch.randn(20, 2, generator=torch.Generator().manual_seed(0)), y, 1, 5, 0) == 1.0
    assert few_shot_accuracy(e, y, 5, 3, 0) == 1.0


@pytest.fixture(scope="module")
def siamese(tmp_path_factory, data_root):
    cfg = load_experiment("lab1-siamese", ["budget=smoke", "data.download=false", "track.tracker=none",
                                           "data.classes=[0,1,2,3,4,5,6,7]"])
    return experiment.train(cfg, data_root, run_path=tmp_path_factory.mktemp("siamese") / "run")


def test_a_tiny_embedding_run_writes_its_metrics_and_plots(siamese, data_root, capsys):
    from dla.cli import main

    summary = json.loads(siamese.summary.read_text())
    for key in ("test_precision1", "test_map_r", "test_fewshot1", "test_fewshot5"):
        assert 0 <= summary[key] <= 1, key
    for name in ("embedding.png", "neighbours.png", "fewshot.png"):
        assert (siamese.plots / name).stat().st_size > 1000, name
    assert main(["--data-root", str(data_root), "eval", str(siamese.path), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["test_precision1"] == summary["test_precision1"] and again["test_map_r"] == summary["test_map_r"]
