"""Run kinds: a new kind is one file plus a YAML (the proof, with tests/kinds/toy_regression.py), every
registered kind is complete, and a run written before kinds were declared still loads."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

from dla.cli import main
from dla.config import load_experiment, load_run_config
from dla.kind import KINDS, get_kind, kind_of, registered
from dla.rundir import RunDir

HERE = Path(__file__).resolve().parent
TOY = HERE / "kinds" / "toy-regression.yaml"
OLD_RUN = HERE / "fixtures" / "old-main-run"  # written by main at edb8ee7, before config.yaml declared kind:


@pytest.fixture
def toy_kind(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE / "kinds"))
    import toy_regression  # noqa: F401  registers the kind

    yield KINDS["toy-regression"]


def test_a_new_kind_trains_evaluates_and_reports_with_no_edit_elsewhere(toy_kind, capsys):
    cfg = load_experiment(str(TOY))
    assert kind_of(cfg) is toy_kind and type(cfg.data).__name__ == "RegressionData"
    assert main(["train", str(TOY), "run_name=toy"]) == 0
    run = RunDir.open("runs/toy-regression/toy")
    summary = run.read_summary()
    assert summary["kind"] == "toy-regression" and summary["status"] == "completed" and summary["unit"] == "epoch"
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2, 3] and "val_r2" in run.read_metrics()[0]
    assert summary["monitor"] == "val_r2" and summary["best_value"] == max(r["val_r2"] for r in run.read_metrics())
    assert set(summary) >= {"test_loss", "test_r2", "best_val_r2"}
    out = capsys.readouterr().out
    assert "| test MSE | test R2 |" in out  # the kind's own table columns

    assert main(["eval", str(run.path), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["kind"] == "toy-regression" and evaluated["test_r2"] == pytest.approx(summary["test_r2"], abs=1e-6)
    # the kind's own commands only: a toy regressor is not an image classifier
    assert main(["ood", str(run.path)]) == 1
    assert "dla ood needs an image-classifier run; runs/toy-regression/toy is a toy-regression run" in capsys.readouterr().err

    assert main(["report", "runs", "--out", "site"]) == 0
    study = Path("site/study/toy-regression.html").read_text()
    assert "toy regressor run" in study and "test R2" in study and "val_r2" in study
    index = Path("site/index.html").read_text()
    assert "1 run in 1 study" in index and "test R2" in index


def test_a_monitor_the_task_does_not_have_is_refused_before_any_file(toy_kind, capsys):
    assert main(["train", str(TOY), "train.monitor=val_acc"]) == 2
    assert "train.monitor: val_acc is not a validation metric of a toy regressor run; valid: val_loss, val_r2" \
        in capsys.readouterr().err
    assert not Path("runs").exists()


def test_a_kind_declared_as_an_entry_point_is_found_by_itself(monkeypatch):
    """A package that declares its kind under the entry-point group dla.kinds needs no import by the user."""
    from importlib.metadata import EntryPoint

    import dla.kind as registry

    monkeypatch.syspath_prepend(str(HERE / "kinds"))
    monkeypatch.delitem(sys.modules, "toy_regression", raising=False)
    monkeypatch.delitem(registry.KINDS, "toy-regression", raising=False)
    monkeypatch.delitem(registry.DATA_SECTIONS, "toy-regression", raising=False)
    point = EntryPoint(name="toy", value="toy_regression", group="dla.kinds")
    monkeypatch.setattr("importlib.metadata.entry_points", lambda group=None: [point] if group == "dla.kinds" else [])
    monkeypatch.setattr(registry, "_loaded", False)
    assert load_experiment(str(TOY)).kind == "toy-regression"
    assert registry.get_kind("toy-regression").title == "toy regressor"


def test_every_built_in_kind_is_complete():

    assert {"image-classifier", "language-model", "text-classifier"} <= set(registered())
    for kind in registered().values():
        assert kind.title and kind.table_columns and kind.sweep_columns and kind.report_columns and kind.fallback
        assert get_kind(kind.name) is kind
    with pytest.raises(Exception, match="kind: 'nope' is not a registered run kind"):
        get_kind("nope")


def test_a_run_written_before_kinds_were_declared_still_loads_and_reports(tmp_path, capsys, data_root):
    runs = shutil.copytree(OLD_RUN, tmp_path / "old")
    run = RunDir.open(runs / "lab1-mlp" / "old-main")
    assert "kind:" not in run.config.read_text()
    cfg = load_run_config(run)
    assert cfg.kind == "image-classifier" and cfg.model.hidden == [4]
    assert main(["report", str(runs), "--out", str(tmp_path / "site")]) == 0
    assert "| lab1-mlp/old-main | MNIST | 3,190 |" in capsys.readouterr().out
    assert main(["--data-root", str(data_root), "eval", str(run.path)]) == 1  # its weights were not kept here
    assert "has no trained weights" in capsys.readouterr().err


def test_kinds_name_no_run_kind_dispatch_outside_themselves():
    """The acceptance greps: at most two `run_kind(` in the package, and no kind switch outside dla/kinds."""
    src = HERE.parent / "src" / "dla"
    texts = {p: p.read_text() for p in src.rglob("*.py")}
    assert sum(t.count("run_kind(") for t in texts.values()) <= 2
    switch = re.compile(r"(==|!=|\bin)\s*\(?(IMAGE_CLASSIFIER|LANGUAGE_MODEL|TEXT_CLASSIFIER|\"(image-classifier|"
                        r"language-model|text-classifier)\")|isinstance\(data, ")
    outside = [p for p, t in texts.items() if "kinds" not in p.parts and switch.search(t)]
    assert not outside, outside


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
