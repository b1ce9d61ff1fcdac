"""OOD detection tracked during training: train.ood_every / train.ood_sets into metrics.jsonl, TensorBoard, the report."""

import pytest
import torch
from conftest import FASHION_SYSTEM, tiny_config

from dla import experiment
from dla.analysis import ood
from dla.analysis.ood_tracking import OODTracking
from dla.errors import ConfigError


def test_the_callback_writes_its_keys_every_n_epochs_into_metrics_and_tensorboard(data_root):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sets = "[noise-uniform,fashion-mnist]" if FASHION_SYSTEM.exists() else "[noise-uniform]"  # Debian's copy
    cfg = tiny_config("run_name=tracked", "train.epochs=3", "train.ood_every=2", "train.ood_n=64",
                      f"train.ood_sets={sets}", "track.tracker=tensorboard")
    run = experiment.train(cfg, data_root)
    records = run.read_metrics()
    keys = {f"ood_{s}_{d}_{m}" for s in cfg.train.ood_sets for d in ("msp", "energy") for m in ("auroc", "fpr95")}
    assert not keys & set(records[0]) and not keys & set(records[2])  # epochs 1 and 3: not a multiple of 2
    assert keys <= set(records[1]) and all(0 <= records[1][k] <= 1 for k in keys)
    assert records[1]["ood_noise-uniform_energy_auroc"] != records[1]["ood_noise-uniform_msp_auroc"]
    events = EventAccumulator(str(run.tb)).Reload()
    assert "ood/noise-uniform_msp_auroc" in events.Tags()["scalars"]
    assert (run.plots / "ood_curves.png").stat().st_size > 10000  # shown by dla report under the run's plots


def test_ood_series_reads_the_tracked_keys_back():
    from dla.report.plots import ood_series

    history = [{"epoch": 1, "val_acc": 0.5}, {"epoch": 2, "ood_noise-uniform_msp_auroc": 0.7, "ood_my_set_energy_fpr95": 0.2}]
    assert ood_series(history) == {("noise-uniform", "msp", "auroc"): [(2, 0.7)], ("my_set", "energy", "fpr95"): [(2, 0.2)]}


def test_the_callback_scores_a_fixed_sample_with_msp_and_energy():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x_id, x_ood = torch.rand(50, 1, 4, 4), torch.rand(40, 1, 4, 4) * 0.1
    cb = OODTracking(1, x_id, {"dark": x_ood})
    model.train()
    got = cb.epoch_metrics(1, model)
    assert model.training  # left in the mode it was in
    with torch.no_grad():
        l_id, l_ood = model(x_id), model(x_ood)
    want = ood.ood_metrics(ood.energy(l_id), ood.energy(l_ood))
    assert got["ood_dark_energy_auroc"] == pytest.approx(want["auroc"], abs=1e-6)
    assert got["ood_dark_msp_fpr95"] == pytest.approx(ood.ood_metrics(ood.msp(l_id), ood.msp(l_ood))["fpr95"], abs=1e-6)
    assert set(got) == {f"ood_dark_{d}_{m}" for d in ("msp", "energy") for m in ("auroc", "fpr95")}


@pytest.mark.parametrize("overrides, expect", [
    (["train.ood_every=1"], "train.ood_sets: give at least one"),
    (["train.ood_every=0", "train.ood_sets=[mnist]"], "train.ood_every: must be > 0"),
    (["train.ood_every=1", "train.ood_sets=[street-signs]"], "train.ood_sets: unknown OOD set 'street-signs'"),
    (["train.ood_every=1", "train.ood_sets=[heldout]"], "train.ood_sets heldout needs"),
    (["train.ood_every=1", "train.ood_sets=[mnist]", "train.ood_n=0"], "train.ood_n: must be > 0"),
])
def test_bad_tracking_settings_stop_before_any_work(data_root, tmp_path, overrides, expect):
    with pytest.raises(ConfigError, match=expect):
        experiment.train(tiny_config(f"runs_dir={tmp_path}/runs", *overrides), data_root)
    assert not (tmp_path / "runs").exists()
