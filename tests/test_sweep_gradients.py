"""Lab 1.2 sweep (smoke budget, real Fashion-MNIST) and the Lab 1.3 gradient-flow callback and plots."""


import pytest
import torch
from conftest import FASHION_SYSTEM, need
from torch import nn

from dla import build, experiment
from dla.analysis.gradients import layer_norms, read_gradients, total_norm
from dla.cli import main
from dla.config import load_experiment, load_run_config
from dla.manifest import read_manifest
from dla.rundir import RunDir
from dla.sweep import run_sweep
from dla.train.callbacks import Callback

RUNS = ["Depth-9", "Depth-9-skip", "Depth-17", "Depth-17-skip", "Depth-48", "Depth-48-skip"]


class StopAfter(Callback):
    def on_epoch_end(self, record, model):
        raise KeyboardInterrupt


@pytest.fixture
def fashion(tmp_path):
    need(FASHION_SYSTEM, "Debian's dataset-fashion-mnist")
    return tmp_path / "empty-root"  # the loader finds Debian's copy by itself


@pytest.mark.slow
def test_smoke_sweep_table_plots_and_resume(fashion, monkeypatch):
    real_train = experiment.train
    calls, interrupt = [], [True]

    def interrupted_third(cfg, root, resume=None, callbacks=(), run_path=None):
        calls.append(run_path or resume.path)
        extra = [StopAfter()] if len(calls) == 3 and interrupt and interrupt.pop() else []
        return real_train(cfg, root, resume=resume, callbacks=[*callbacks, *extra], run_path=run_path)

    monkeypatch.setattr(experiment, "train", interrupted_third)
    overrides = ["budget=smoke", "data=fashion-mnist", "train.epochs=2", "track.tracker=none"]
    with pytest.raises(KeyboardInterrupt):
        run_sweep("lab1-depth", overrides, fashion)
    sweep_dir = next(p for p in (RunDir("runs/lab1-depth").path).iterdir())
    done = {name: (sweep_dir / name / "summary.json").stat().st_mtime_ns for name in RUNS[:2]}
    assert RunDir(sweep_dir / RUNS[2]).read_summary()["status"] == "interrupted"

    calls.clear()
    out = run_sweep("lab1-depth", overrides, fashion)
    assert out == sweep_dir
    assert [p.name for p in calls] == RUNS[2:]  # finished runs were skipped, not redone
    assert {n: (sweep_dir / n / "summary.json").stat().st_mtime_ns for n in RUNS[:2]} == done
    resumed = RunDir(sweep_dir / RUNS[2])
    assert resumed.read_summary()["status"] == "completed" and len(resumed.read_metrics()) == 2

    table = (sweep_dir / "table.md").read_text().splitlines()
    assert table[0].startswith("| Net | Accuracy | Loss | params |")
    assert [row.split("|")[1].strip() for row in table[2:]] == RUNS
    for plot in ("curves.png", "depth.png"):
        assert (sweep_dir / plot).stat().st_size > 5000
    assert [f["file"] for f in read_manifest(sweep_dir)["figures"]] == ["curves.png", "depth.png"]
    for name in RUNS:
        cfg = load_run_config(RunDir(sweep_dir / name))
        assert cfg.data.name == "fashion-mnist" and cfg.model.width == 4
    # the gradient-flow report over the sweep's runs
    assert main(["gradients", str(sweep_dir), "--out", "grads"]) == 0
    summary = (RunDir("grads").path / "gradients.md").read_text()
    assert all(f"/{n} |" in summary for n in RUNS)
    for plot in ("layers.png", "first_last.png", "total.png"):
        assert (RunDir("grads").path / plot).stat().st_size > 5000
    assert [f["file"] for f in read_manifest(RunDir("grads").path)["figures"]] == ["layers.png", "first_last.png", "total.png"]


def test_layer_norms_match_manual_norms():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 5), nn.Linear(5, 2))
    model(torch.randn(4, 1, 6, 6)).pow(2).sum().backward()
    norms = layer_norms(model)
    assert list(norms) == ["0", "3", "4"]  # every Conv/Linear layer, in order
    for name, module in model.named_modules():
        if name in norms:
            assert norms[name]["grad"] == pytest.approx(float(module.weight.grad.detach().norm()), rel=1e-6)
            assert norms[name]["weight"] == pytest.approx(float(module.weight.detach().norm()), rel=1e-6)
            assert norms[name]["ratio"] == pytest.approx(norms[name]["grad"] / norms[name]["weight"], rel=1e-9)


@pytest.mark.parametrize("clip", [None, 0.05])
def test_gradient_log_covers_every_layer_and_clipping_caps_the_norm(fashion, clip):
    cfg = load_experiment(
        "lab1-cnn",
        ["budget=smoke", "data=fashion-mnist", "model.depth=17", "train.grad_stats_every=1", "track.tracker=none",
         "optim.lr=0.01", f"train.clip_grad_norm={clip}", f"run_name=clip{clip}"],
    )
    run = experiment.train(cfg, fashion)
    records = read_gradients(run)
    model, _ = build.load_run_model(run)
    expected_layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(records) == run.read_summary()["steps"]
    assert all(list(r["layers"]) == expected_layers for r in records)
    totals = [total_norm(r) for r in records]
    if clip is None:
        assert max(totals) > 0.05  # so the clipped case below is a real cap
    else:
        assert max(totals) <= clip * (1 + 1e-4)
