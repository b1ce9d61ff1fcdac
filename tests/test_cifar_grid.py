"""Lab 1.2 on CIFAR-10 (issue 14): the budget=cpu-cifar preset, one net of it, and the GPU script on a CPU."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, SHARED, need

from dla import experiment
from dla.config import load_experiment
from dla.data.vision import import_dataset, load_image_data
from dla.rundir import RunDir

RUNS = ["Depth-9", "Depth-9-skip", "Depth-17", "Depth-17-skip", "Depth-48", "Depth-48-skip"]


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    need(SHARED / "cifar10-test", "the shared CIFAR-10 test set")
    need(SHARED / "cifar10-train-jpeg", "the shared CIFAR-10 JPEG train copy")
    root = tmp_path_factory.mktemp("cifar-root")
    import_dataset("cifar10", SHARED / "cifar10-test", root)
    import_dataset("cifar10", SHARED / "cifar10-train-jpeg", root)
    return root


def test_cpu_cifar_preset_resolves_to_the_documented_settings():
    cfg = load_experiment("lab1-cnn", ["budget=cpu-cifar", "data=cifar10", "model.depth=48", "model.residual=true"])
    assert (cfg.model.width, cfg.model.fc_width, cfg.model.head) == (8, 128, "original")
    assert (cfg.train.epochs, cfg.train.patience, cfg.train.monitor, cfg.train.batch_size) == (10, 4, "val_acc", 128)
    assert (cfg.train.precision, cfg.train.channels_last, cfg.train.compile) == ("auto", True, False)
    assert (cfg.data.name, cfg.data.augment, cfg.data.val_size, cfg.data.test_subset) == ("cifar10", "crop-flip", 5000, None)
    assert cfg.sched.name == "onecycle"
    assert cfg.presets == {"budget": "cpu-cifar"}
    # an explicit key still wins over the preset
    assert load_experiment("lab1-cnn", ["budget=cpu-cifar", "train.epochs=3"]).train.epochs == 3


def test_one_cifar_net_of_the_preset_trains_on_a_subset(cifar_root):
    cfg = load_experiment("lab1-cnn", [
        "budget=cpu-cifar", "data=cifar10", "data.train_subset=256", "data.val_size=128", "data.test_subset=256",
        "train.epochs=1", "track.tracker=none", "run_name=cifar-smoke",
    ])
    summary = experiment.train(cfg, cifar_root).read_summary()
    assert summary["status"] == "completed"
    assert "JPEG train copy" in summary["data"]
    assert 0.0 <= summary["test_acc"] <= 1.0 and summary["epochs_run"] == 1
    data = load_image_data("cifar10", cifar_root, val_size=128, classes=[0, 1, 2])
    assert "JPEG train copy" in data.source and data.test_source == "CIFAR-10 (classes 0,1,2)"  # the test set is lossless


@pytest.mark.slow
def test_gpu_script_runs_end_to_end_on_cpu_with_the_smoke_budget(tmp_path):
    need(SHARED / "cifar10-test", "the shared CIFAR-10 test set")
    need(SHARED / "cifar10-train-jpeg", "the shared CIFAR-10 JPEG train copy")
    env = {**os.environ, "BUDGET": "smoke", "CIFAR_DIR": str(SHARED), "DLA_DATA_ROOT": str(tmp_path / "root"),
           "DLA": str(Path(sys.executable).with_name("dla"))}
    out = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_lab1.sh"), "track.tracker=none"],
                         env=env, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "on cpu" in out.stdout and "the grid took" in out.stdout
    sweep_dir = next((tmp_path / "runs" / "lab1-depth").iterdir())
    table = (sweep_dir / "table.md").read_text().splitlines()
    assert table[0].startswith("| Net | Accuracy | Loss | params |")
    assert [row.split("|")[1].strip() for row in table[2:]] == RUNS
    assert all("JPEG train copy" in row for row in table[2:])
    assert (sweep_dir / "depth.png").stat().st_size > 5000


@pytest.mark.parametrize("var, value", [("EPOCHS", "0"), ("EPOCHS", "ten"), ("BATCH", "-1")])
def test_gpu_script_refuses_bad_settings_in_one_line(tmp_path, var, value):
    env = {**os.environ, var: value, "DLA": str(Path(sys.executable).with_name("dla"))}
    out = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_lab1.sh")], env=env, capture_output=True, text=True,
                         cwd=tmp_path, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and var in out.stderr
