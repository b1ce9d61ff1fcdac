"""Lab 1, exercise 2.2 (newer edition): knowledge distillation, its loss and a tiny teacher-student run."""

import json

import pytest
import torch
import torch.nn.functional as F

from dla import experiment
from dla.config import load_experiment
from dla.rundir import RunDir
from dla.train.tasks import distillation_loss


def test_at_t1_and_alpha0_the_loss_is_the_cross_entropy():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(16, 10, generator=g), torch.randn(16, 10, generator=g)
    y = torch.randint(0, 10, (16,), generator=g)
    assert torch.equal(distillation_loss(s, t, y, 1.0, 0.0), F.cross_entropy(s, y))
    assert torch.equal(distillation_loss(s, t, y, 1.0, 0.0, 0.1), F.cross_entropy(s, y, label_smoothing=0.1))


def test_the_loss_by_hand():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(8, 5, generator=g, dtype=torch.float64), torch.randn(8, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (8,), generator=g)
    temp, alpha = 2.5, 0.7
    ps, pt = torch.softmax(s / temp, 1), torch.softmax(t / temp, 1)
    kl = (pt * (pt.log() - ps.log())).sum(1).mean()
    ce = -torch.log_softmax(s, 1)[torch.arange(8), y].mean()
    expected = (1 - alpha) * ce + alpha * temp**2 * kl
    assert distillation_loss(s, t, y, temp, alpha).item() == pytest.approx(expected.item(), rel=1e-12)
    assert distillation_loss(s, s, y, temp, 1.0).abs().item() < 1e-12  # a student equal to its teacher: no soft loss


TINY = ["data=mnist", "budget=smoke", "data.download=false", "track.tracker=none", "train.precision=fp32"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, data_root):
    cfg = load_experiment("lab1-cnn", [*TINY, "model.width=8", "model.fc_width=128"])
    return experiment.train(cfg, data_root, run_path=tmp_path_factory.mktemp("teacher") / "run")


def test_a_student_with_alpha0_trains_exactly_as_without_a_teacher(teacher, data_root, tmp_path):
    base = [*TINY, "distill.temperature=1", "distill.alpha=0"]
    plain = experiment.train(load_experiment("lab1-distill", base), data_root, run_path=tmp_path / "plain")
    taught = experiment.train(load_experiment("lab1-distill", [*base, f"teacher={teacher.path}"]), data_root,
                              run_path=tmp_path / "taught")
    assert [r["val_loss"] for r in plain.read_metrics()] == [r["val_loss"] for r in taught.read_metrics()]
    summary = json.loads(taught.summary.read_text())
    assert summary["teacher"] == str(teacher.path) and summary["teacher_params"] > summary["params"]
    soft = experiment.train(load_experiment("lab1-distill", [*TINY, f"teacher={teacher.path}"]), data_root,
                            run_path=tmp_path / "soft")
    assert [r["val_loss"] for r in soft.read_metrics()] != [r["val_loss"] for r in plain.read_metrics()]
    assert RunDir.open(soft.path).best_weights.is_file()
