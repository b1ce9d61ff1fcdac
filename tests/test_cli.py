"""End to end through the `dla` command, as a user runs it: train, eval, predict, report, resume, torchrun."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

import torch
from conftest import TINY, torchrun
from dla.build import load_run_model
from dla.cli import main
from dla.data.vision import load_image_data
from dla.rundir import RunDir

pytestmark = pytest.mark.slow


def dla(*args, env_root, check=True, timeout=300):
    env = {**os.environ, "DLA_DATA_ROOT": str(env_root), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "dla", *args], capture_output=True, text=True, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"dla {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("train", "eval", "predict", "report", "data"):
        assert command in out


def test_config_error_is_one_line_not_a_traceback(data_root):
    proc = dla("train", "lab1-mlp", "optim.lrr=1", env_root=data_root, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "dla: error: unknown key optim.lrr (did you mean optim.lr?); valid keys: optim.name, optim.lr, "
        "optim.weight_decay, optim.momentum, optim.nesterov, optim.betas, optim.muon_lr, optim.muon_momentum"
    )


def test_missing_data_is_one_line(tmp_path):
    proc = dla("train", "lab1-mlp", *TINY, env_root=tmp_path / "empty", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "MNIST is missing" in proc.stderr and "dla data import mnist" in proc.stderr


def test_demo_flow_train_eval_predict_report(data_root, tmp_path):
    """What `make demo` does, on a subset: data list, train, eval, predict on PNG files, report."""
    listing = dla("data", "list", env_root=data_root).stdout
    assert "mnist" in listing and "present" in listing
    dla("train", "lab1-mlp", *TINY, "data.train_subset=4096", "train.epochs=4", "run_name=demo", env_root=data_root)
    run = RunDir.open("runs/lab1-mlp/demo")
    summary = run.read_summary()
    assert summary["test_acc"] > 0.5  # a learning check with a wide margin (chance is 0.1; about 0.9 here)

    evaluated = json.loads(dla("eval", str(run.path), "--json", env_root=data_root).stdout)
    assert evaluated["test_acc"] == pytest.approx(summary["test_acc"], abs=1e-6)

    test = load_image_data("mnist", data_root, val_size=100, download=False).test
    paths = []
    for i in range(8):
        path = tmp_path / f"digit{i}.png"
        Image.fromarray(test.x[i, 0].numpy()).save(path)
        paths.append(str(path))
    lines = dla("predict", str(run.path), *paths, "--json", "--top-k", "3", env_root=data_root).stdout.splitlines()
    preds = [json.loads(line) for line in lines]
    assert len(preds) == 8 and all(len(p["top"]) == 3 for p in preds)
    assert all(p["top"][0]["prob"] >= p["top"][1]["prob"] for p in preds)
    # the PNG files, read back, give what the run's model gives on the same pixels in memory (any CPU)
    model, _ = load_run_model(run)
    with torch.no_grad():
        probs = model(test.x[:8].float() / 255).softmax(1)
    assert [p["top"][0]["class"] for p in preds] == [str(int(c)) for c in probs.argmax(1)]
    assert [p["top"][0]["prob"] for p in preds] == pytest.approx(probs.max(1).values.tolist(), abs=1e-4)
    bad = dla("predict", str(run.path), __file__, env_root=data_root, check=False)
    assert bad.returncode == 1 and "cannot read as an image" in bad.stderr

    dla("train", "lab1-mlp", *TINY, "model.hidden=[32]", "run_name=small", env_root=data_root)
    out = dla("report", "runs/lab1-mlp", "--out", "rep", env_root=data_root).stdout
    assert "| lab1-mlp/demo |" in out and "| lab1-mlp/small |" in out
    assert out.splitlines()[-1] == "wrote rep/index.html"
    assert (tmp_path / "rep" / "study" / "lab1-mlp.html").stat().st_size > 1000


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(data_root):
    args = ("lab1-mlp", *TINY, "data.train_subset=16384", "model.hidden=[256]", "train.epochs=4", "train.log_every=1")
    dla("train", *args, "run_name=straight", env_root=data_root)
    env = {**os.environ, "DLA_DATA_ROOT": str(data_root)}
    proc = subprocess.Popen([sys.executable, "-m", "dla", "train", *args, "run_name=killed"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = RunDir("runs/lab1-mlp/killed").metrics
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 1):
        time.sleep(0.05)
    time.sleep(0.3)  # well into epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = RunDir.open("runs/lab1-mlp/killed")
    assert not killed.summary.exists() and 1 <= len(killed.read_metrics()) < 4
    dla("train", "--resume", str(killed.path), env_root=data_root)
    a, b = RunDir("runs/lab1-mlp/straight").read_summary(), killed.read_summary()
    assert (a["test_loss"], a["test_acc"], a["best_epoch"]) == (b["test_loss"], b["test_acc"], b["best_epoch"])
    assert [r["val_loss"] for r in RunDir("runs/lab1-mlp/straight").read_metrics()] == [
        r["val_loss"] for r in killed.read_metrics()
    ]


@pytest.mark.parametrize("launch, times", [
    (["--master_port", "29517"], 3),
    # the multi-node form (README, Engine) on one node: a c10d rendezvous on localhost
    (["--nnodes", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:29523", "--rdzv-id", "dla-test"], 2),
], ids=["standalone", "c10d-rendezvous"])
def test_torchrun_two_processes_match_single_process(data_root, launch, times):
    """2 gloo processes give the 1-process metrics; 5 launches across both forms, each exiting 0 (the process
    group is destroyed at the end of the command, dla.device.release_distributed)."""
    args = ("lab1-mlp", *TINY, "model.dropout=0", "train.epochs=2")
    env = {**os.environ, "DLA_DATA_ROOT": str(data_root), "OMP_NUM_THREADS": "1"}
    for i in range(times):
        torchrun("train", *args, f"run_name=ddp{i}", env=env, launch=launch)
    dla("train", *args, "run_name=single", env_root=data_root)
    assert sorted(p.name for p in (RunDir("runs/lab1-mlp").path).iterdir()) == [*(f"ddp{i}" for i in range(times)), "single"]
    single = RunDir("runs/lab1-mlp/single")
    assert single.read_summary()["processes"] == 1
    for i in range(times):
        ddp = RunDir(f"runs/lab1-mlp/ddp{i}")
        assert ddp.read_summary()["processes"] == 2
        for a, b in zip(ddp.read_metrics(), single.read_metrics(), strict=True):
            for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
                assert a[key] == pytest.approx(b[key], abs=2e-4), (key, a, b)
        assert ddp.read_summary()["test_acc"] == pytest.approx(single.read_summary()["test_acc"], abs=2e-3)


def test_torchrun_error_exits_non_zero_on_every_rank_with_one_line(data_root):
    """An error under torchrun still ends with one line, and the job fails (no hang on a destroyed group)."""
    env = {**os.environ, "DLA_DATA_ROOT": str(data_root), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29527",
           "-m", "dla", "train", "lab1-mlp", *TINY, "train.batch_size=127"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "terminate called" not in proc.stderr
    assert "train.batch_size=127 must divide evenly across 2 processes" in proc.stderr


def test_the_command_ends_with_its_exit_code_after_the_exit_handlers_and_without_teardown(monkeypatch):
    import atexit

    from dla import cli

    events = []
    monkeypatch.setattr(cli, "main", lambda: 3)
    monkeypatch.setattr(atexit, "_run_exitfuncs", lambda: events.append("atexit"))

    def fake_exit(code):
        events.append(("os._exit", code))
        raise SystemExit(code)

    monkeypatch.setattr(cli.os, "_exit", fake_exit)
    monkeypatch.setattr(cli.sys, "gettrace", lambda: None)
    monkeypatch.setattr(cli.sys, "getprofile", lambda: None)
    with pytest.raises(SystemExit) as stop:
        cli.run()
    assert stop.value.code == 3 and events == ["atexit", ("os._exit", 3)]
    events.clear()
    monkeypatch.setattr(cli.sys, "getprofile", lambda: object())  # under cProfile: the normal exit, which writes its file
    with pytest.raises(SystemExit) as stop:
        cli.run()
    assert stop.value.code == 3 and events == []
