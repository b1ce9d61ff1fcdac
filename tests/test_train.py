import re
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file

from dla import build, experiment
from dla.config import load_run_config, to_dict
from dla.device import make_accelerator
from dla.errors import CheckpointError, ConfigError, DlaError, TrainingDiverged
from dla.models import build_model
from dla.models.mlp import MLPConfig
from dla.rundir import RunDir
from dla.train.callbacks import Callback, EarlyStopping
from dla.train.checkpoint import load_weights, save_weights
from dla.train.tasks import evaluate

SRC = Path(__file__).resolve().parents[1] / "src"


class StopAfter(Callback):
    """Simulates Ctrl-C right after an epoch has been checkpointed."""

    def __init__(self, epochs: int):
        self.epochs = epochs

    def on_epoch_end(self, record, model):
        if record["epoch"] == self.epochs:
            raise KeyboardInterrupt


def test_run_directory_contents(data_root):
    run = experiment.train(tiny_config("run_name=a", "track.tracker=tensorboard"), data_root)
    for path in (run.config, run.metrics, run.summary, run.best_weights, run.last_state, run.plots / "curves.png"):
        assert path.is_file(), path
    assert any(run.tb.iterdir())
    records = run.read_metrics()
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "lr"} <= set(records[0])
    summary = run.read_summary()
    for key in ("best_epoch", "best_value", "test_loss", "test_acc", "wall_time_s", "params", "torch", "device"):
        assert key in summary, key
    assert summary["status"] == "completed" and summary["params"] == 784 * 64 + 64 + 64 * 10 + 10
    assert summary["test_acc"] > 0.6  # 3 tiny epochs on 1024 real images still learn
    assert load_run_config(run) == tiny_config("run_name=a", "track.tracker=tensorboard")
    # start-up: from the process's start for its first run (here the test session's), else from train()
    second = experiment.train(tiny_config("run_name=b"), data_root).read_summary()
    assert summary["first_step_s"] > 0 and 0 < second["first_step_s"] < second["wall_time_s"]


def test_a_config_cut_short_is_refused_and_older_complete_ones_still_load(tmp_path):
    """A prefix of a YAML file is still YAML: a cut config.yaml must not load with defaults."""
    cfg = tiny_config("run_name=a")
    run = RunDir.create(tmp_path / "run", to_dict(cfg))
    text = run.config.read_text()
    assert text.endswith("# end of the resolved config\n")
    assert load_run_config(RunDir.open(run.path)) == cfg
    for cut in (0.3, 0.9, len(text) - 3):  # mid-line (a YAML error), mid-section, inside the last line
        run.config.write_text(text[: int(cut * len(text)) if cut < 1 else cut])
        with pytest.raises(DlaError, match="config.yaml"):
            load_run_config(RunDir.open(run.path))
    run.config.write_text(text[: text.index("\ntrain:") + 1])  # whole sections missing, the cut at a line end
    with pytest.raises(DlaError, match="config.yaml: incomplete run config \\(no train section\\)"):
        RunDir.open(run.path)
    with pytest.raises(DlaError, match="config.yaml: incomplete run config \\(no end mark\\)"):
        run.config.write_text(text.removesuffix("# end of the resolved config\n"))  # every section, no mark
        RunDir.open(run.path)
    older = "".join(line for line in text.splitlines(keepends=True) if not line.startswith("kind:"))
    run.config.write_text(older.removesuffix("# end of the resolved config\n"))  # as runs wrote it before the mark
    assert load_run_config(RunDir.open(run.path)) == cfg  # its kind told apart by its data set


def test_resume_gives_identical_metrics(data_root):
    straight = experiment.train(tiny_config("run_name=straight"), data_root)
    with pytest.raises(KeyboardInterrupt):
        experiment.train(tiny_config("run_name=cut"), data_root, callbacks=[StopAfter(1)])
    cut = RunDir.open("runs/lab1-mlp/cut")
    assert len(cut.read_metrics()) == 1 and cut.read_summary()["status"] == "interrupted"
    resumed = experiment.train(load_run_config(cut), data_root, resume=cut)
    strip = lambda rs: [{k: v for k, v in r.items() if "time" not in k and k != "elapsed_s"} for r in rs]
    assert strip(resumed.read_metrics()) == strip(straight.read_metrics())
    a, b = straight.read_summary(), resumed.read_summary()
    assert (a["test_loss"], a["test_acc"], a["best_epoch"]) == (b["test_loss"], b["test_acc"], b["best_epoch"])


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(data_root):
    class Poison(Callback):
        def on_step_end(self, step, model):
            if step == 11:  # epoch 2 of 8 steps each: poison the weights so the next loss is NaN
                with torch.no_grad():
                    next(model.parameters()).fill_(float("nan"))

    with pytest.raises(TrainingDiverged) as exc:
        experiment.train(tiny_config("run_name=nan", "train.log_every=3"), data_root, callbacks=[Poison()])
    message = str(exc.value)
    assert re.search(r"loss became nan at step 12 \(epoch 2\)", message), message
    run = RunDir.open("runs/lab1-mlp/nan")
    state = torch.load(run.last_state, weights_only=True)
    assert state["fit"]["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values())
    assert run.read_summary()["status"] == "failed"


def test_huge_learning_rate_diverges_cleanly(data_root):
    with pytest.raises(TrainingDiverged, match=r"loss became (nan|inf) at step \d+"):
        experiment.train(tiny_config("run_name=lr", "optim.name=sgd", "optim.lr=1e12", "sched.name=none", "optim.momentum=0"), data_root)


def test_early_stopping_restores_best_weights(data_root):
    run = experiment.train(
        tiny_config("run_name=es", "train.epochs=30", "train.patience=2", "train.monitor=val_loss", "optim.lr=0.05", "sched.name=none"),
        data_root,
    )
    records, summary = run.read_metrics(), run.read_summary()
    assert summary["status"] == "stopped early" and len(records) < 30
    best = min(records, key=lambda r: r["val_loss"])
    assert summary["best_epoch"] == best["epoch"] and len(records) == best["epoch"] + 2
    model, cfg = build.load_run_model(run)
    acc = evaluate(model, build.load_data(cfg, data_root).val, make_accelerator(cfg.train))
    assert acc["loss"] == pytest.approx(best["val_loss"], rel=1e-5)


def test_early_stopping_rule():
    es = EarlyStopping("val_acc", patience=2, min_delta=0.01)
    assert es.update(0.5, 1) and not es.update(0.505, 2) and not es.should_stop
    assert not es.update(0.4, 3) and es.should_stop and es.best_epoch == 1


def test_bf16_and_clipping_run(data_root):
    run = experiment.train(tiny_config("run_name=bf", "train.precision=bf16", "train.clip_grad_norm=0.5"), data_root)
    assert run.read_summary()["test_acc"] > 0.5


def test_weights_are_safetensors_and_mismatch_is_reported(tmp_path):
    model = build_model(MLPConfig(hidden=[8]), (1, 4, 4), 3, (0.5,), (0.5,))
    save_weights(model, tmp_path / "w.safetensors")
    state = load_file(tmp_path / "w.safetensors")  # no pickle involved
    assert set(state) == set(model.state_dict())
    other = build_model(MLPConfig(hidden=[9]), (1, 4, 4), 3, (0.5,), (0.5,))
    with pytest.raises(CheckpointError, match="net.1.weight has shape \\(8, 16\\) in the file but \\(9, 16\\)"):
        load_weights(other, tmp_path / "w.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(CheckpointError, match="damaged or not a safetensors file"):
        load_weights(model, tmp_path / "junk.safetensors")


def test_no_unsafe_torch_load_in_code():
    offenders = []
    for path in SRC.rglob("*.py"):
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if "torch.load(" in line and "weights_only=True" not in line:
                offenders.append(f"{path}:{lineno}")
            if re.search(r"\bpickle\.loads?\(", line):
                offenders.append(f"{path}:{lineno}")
    assert not offenders, offenders


def test_wandb_without_the_package_fails_before_training(data_root, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match="tracker=wandb needs the wandb package"):
        experiment.train(tiny_config("run_name=wb", "tracker=wandb"), data_root)
    assert not Path("runs").exists()
