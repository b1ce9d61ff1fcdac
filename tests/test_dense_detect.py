"""Lab 1.2.2, the dense detector: targets from boxes, the loss, box decoding, NMS, calibration, the layouts, a run."""

import json
import math

import pytest
import torch

from dla import experiment
from dla.analysis.dense_detect import (best_f1_threshold, calibrate, decode, dense_loss, dense_targets,
                                       fit_calibration)
from dla.analysis.detect import Detections, match, match_flags
from dla.cli import main
from dla.config import load_experiment
from dla.data.canvas import LAYOUTS, detection_canvases, eval_canvases, training_canvases
from dla.data.vision import load_arrays
from dla.models.detector import DenseDetector
from dla.models.registry import Normalize
from dla.train.callbacks import Callback


def test_targets_of_known_boxes():
    # a 32 px digit centred at (24, 28): cell (7, 6), offset 0; a 12 px one centred at (11, 51): cell (12, 2)
    boxes = torch.tensor([[8.0, 12.0, 40.0, 44.0], [5.0, 45.0, 17.0, 57.0]])
    heat, size, offset, mask = dense_targets([boxes], [torch.tensor([3, 3])], 10, 64, 64)
    assert heat.shape == (1, 10, 16, 16) and size.shape == offset.shape == (1, 2, 16, 16) and mask.shape == (1, 16, 16)
    assert torch.nonzero(mask[0]).tolist() == [[7, 6], [12, 2]]
    assert torch.nonzero(heat[0] == 1).tolist() == [[3, 7, 6], [3, 12, 2]]
    assert heat[0, :3].abs().sum() == 0 and heat[0, 4:].abs().sum() == 0  # other classes: background
    sigma = 32 / 4 / 6  # the large digit; the small one's is the floor 0.5
    assert heat[0, 3, 7, 7] == pytest.approx(math.exp(-1 / (2 * sigma**2)), abs=1e-6)
    assert heat[0, 3, 9, 8] == pytest.approx(math.exp(-8 / (2 * sigma**2)), abs=1e-6)
    assert heat[0, 3, 12, 3] == pytest.approx(math.exp(-1 / (2 * 0.5**2)), abs=1e-6)
    assert size[0, :, 7, 6].tolist() == pytest.approx([math.log(8), math.log(8)])
    assert size[0, :, 12, 2].tolist() == pytest.approx([math.log(3), math.log(3)])
    assert offset[0, :, 7, 6].tolist() == [0.0, 0.0]
    assert offset[0, :, 12, 2].tolist() == pytest.approx([11 / 4 - 2, 51 / 4 - 12])  # (0.75, 0.75)
    assert size[0][:, ~mask[0]].abs().sum() == 0 and offset[0][:, ~mask[0]].abs().sum() == 0
    # two classes side by side keep their own maps; a canvas with no digit has no target
    heat, _, _, mask = dense_targets([boxes, torch.zeros(0, 4)], [torch.tensor([1, 2]), torch.zeros(0, dtype=torch.long)],
                                     10, 64, 64)
    assert heat[0, 1, 7, 6] == 1 and heat[0, 2, 12, 2] == 1 and heat[0, 2, 7, 6] == pytest.approx(math.exp(-41 / 0.5), abs=1e-9)
    assert heat[0, 1, 12, 2] == pytest.approx(math.exp(-41 / (2 * sigma**2)), abs=1e-9)
    assert heat[1].abs().sum() == 0 and not mask[1].any()


def _head_from_targets(heat, size, offset, sure=0.9):
    """The head output whose decoding must give back the boxes: logit(sure) at every centre, -20 elsewhere."""
    logits = torch.where(heat == 1, torch.logit(torch.tensor(sure)), torch.tensor(-20.0))
    return torch.cat([logits, size, offset], 1)


def test_decoding_the_targets_gives_back_the_boxes_exactly():
    boxes = [torch.tensor([[8.0, 12.0, 40.0, 44.0], [5.0, 45.0, 17.0, 57.0], [44.0, 2.0, 63.0, 21.0]]),
             torch.tensor([[0.0, 0.0, 64.0, 64.0]])]
    labels = [torch.tensor([3, 9, 0]), torch.tensor([5])]
    out = _head_from_targets(*dense_targets(boxes, labels, 10, 64, 64)[:3])
    found = decode(out, 10, threshold=0.5)
    for (bx, lab, sc), truth, truth_labels in zip(found, boxes, labels):
        order = torch.argsort(truth[:, 0])
        got = torch.argsort(bx[:, 0])
        assert torch.allclose(bx[got], truth[order], atol=1e-4), (bx, truth)
        assert lab[got].tolist() == truth_labels[order].tolist()
        assert torch.allclose(sc, torch.full_like(sc, 0.9))
    assert [len(f[0]) for f in decode(out, 10, threshold=0.95)] == [0, 0]  # nothing reaches 0.95


def test_peaks_and_class_agnostic_nms():
    classes, gh, gw = 3, 8, 8
    out = torch.full((1, classes + 4, gh, gw), -20.0)
    out[0, classes : classes + 2] = math.log(4.0)  # every cell: a 16x16 px box, centred at the cell's corner
    out[0, classes + 2 :] = 0.0
    out[0, 0, 3, 3], out[0, 0, 3, 4] = 2.0, 1.0  # a neighbour lower than a peak is not a peak
    out[0, 1, 3, 3] = 1.5  # another class on the same place: one digit, the better class kept by NMS
    out[0, 2, 6, 6] = 0.5  # a second digit far away
    (boxes, labels, scores), = decode(out, classes, threshold=0.1)
    assert labels.tolist() == [0, 2]
    assert scores.tolist() == pytest.approx([torch.sigmoid(torch.tensor(2.0)).item(), torch.sigmoid(torch.tensor(0.5)).item()])
    assert boxes.tolist() == [[4.0, 4.0, 20.0, 20.0], [16.0, 16.0, 32.0, 32.0]]  # centre (3 + 0) * 4 = 12, +- 8
    (_, labels, _), = decode(out, classes, threshold=0.1, nms_iou=1.0)  # NMS off: both classes at (3, 3) stay
    assert sorted(labels.tolist()) == [0, 1, 2]
    (boxes, _, _), = decode(out, classes, threshold=0.1, image_size=(20, 30))
    assert boxes[:, 3].max() <= 20 and boxes[:, 2].max() <= 30


def test_loss_by_hand():
    heat = torch.zeros(1, 1, 2, 2)
    heat[0, 0, 0, 0], heat[0, 0, 0, 1] = 1.0, 0.5
    mask = heat[:, 0] == 1
    size, offset = torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2)
    size[0, :, 0, 0], offset[0, :, 0, 0] = torch.tensor([1.0, 2.0]), torch.tensor([0.25, 0.5])
    logits = torch.tensor([[0.0, 1.0], [-1.0, -2.0]])
    out = torch.zeros(1, 5, 2, 2)
    out[0, 0] = logits
    out[0, 1:3, 0, 0], out[0, 3:5, 0, 0] = torch.tensor([1.5, 2.0]), torch.tensor([0.25, 0.0])
    loss, parts = dense_loss(out, heat, size, offset, mask)
    p = torch.sigmoid(logits)
    pos = -((1 - p[0, 0]) ** 2) * torch.log(p[0, 0])
    neg = -(((1 - 0.5) ** 4) * p[0, 1] ** 2 * torch.log(1 - p[0, 1]) + p[1, 0] ** 2 * torch.log(1 - p[1, 0])
            + p[1, 1] ** 2 * torch.log(1 - p[1, 1]))
    assert parts["heat_loss"].item() == pytest.approx((pos + neg).item(), rel=1e-5)
    assert parts["size_loss"].item() == pytest.approx(0.25)  # |1.5 - 1| and 0, averaged
    assert parts["offset_loss"].item() == pytest.approx(0.25)  # 0 and |0 - 0.5|
    assert loss.item() == pytest.approx((pos + neg).item() + 0.5, rel=1e-5)


def test_calibration_matches_a_logistic_regression_and_is_monotone():
    from sklearn.linear_model import LogisticRegression

    g = torch.Generator().manual_seed(0)
    scores = torch.rand(4000, generator=g).clamp(1e-4, 1 - 1e-4)
    z = torch.logit(scores)
    right = torch.rand(4000, generator=g) < torch.sigmoid(1.7 * z - 0.8)
    a, b = fit_calibration(scores, right)
    ref = LogisticRegression(C=1e9, tol=1e-12, max_iter=1000).fit(z.double().numpy()[:, None], right.numpy())
    assert a == pytest.approx(float(ref.coef_[0, 0]), rel=1e-3) and b == pytest.approx(float(ref.intercept_[0]), abs=1e-3)
    ordered = calibrate(torch.sort(scores).values, (a, b))
    assert bool((ordered[1:] >= ordered[:-1]).all())
    assert fit_calibration(scores, torch.ones(4000, dtype=torch.bool)) == (1.0, 0.0)  # one outcome only: identity
    assert torch.equal(calibrate(scores, None), scores)


def test_match_flags_and_the_best_f1_threshold():
    gt = torch.tensor([[0.0, 0.0, 20.0, 20.0], [30.0, 30.0, 50.0, 50.0]])
    gl = torch.tensor([1, 2])
    pred = Detections(torch.tensor([[0.0, 0.0, 20.0, 20.0], [1.0, 1.0, 21.0, 21.0], [30.0, 30.0, 50.0, 50.0],
                                    [60.0, 0.0, 80.0, 20.0]]), torch.tensor([1, 1, 2, 3]), torch.tensor([0.9, 0.95, 0.4, 0.6]))
    # the better-scored duplicate takes the first digit; the exact box comes second and is a false positive
    assert match_flags(pred, gt, gl).tolist() == [False, True, True, False]
    assert match(pred, gt, gl) == (2, 2, 0)
    # F1 = 2 TP / (kept + digits): all four kept (up to 0.4), 4 / 6; three (to 0.6), 2 / 5; two (to 0.9), 2 / 4;
    # one (to 0.95), 2 / 3. The best is the lowest threshold reaching 2 / 3: 0.3, or 0.91 when searched from 0.5
    t, f1 = best_f1_threshold([pred.scores], [match_flags(pred, gt, gl)], digits=2)
    assert (t, f1) == (0.3, pytest.approx(2 / 3))
    t, f1 = best_f1_threshold([pred.scores], [match_flags(pred, gt, gl)], digits=2, low=0.5)
    assert (t, f1) == (pytest.approx(0.91), pytest.approx(2 / 3))


def test_layouts_keep_their_gap_and_packed_canvases_are_crowded():
    g = torch.Generator().manual_seed(3)
    digits = (torch.rand(30, 1, 28, 28, generator=g) > 0.6).to(torch.uint8) * 200
    labels = torch.arange(30) % 10
    for placement in ("uniform", "packed"):
        canv = detection_canvases(digits, labels, 20, 96, (2, 8), (12, 40), seed=1, gap=1, placement=placement)
        touching = 0
        for bx in canv.boxes:
            b = bx.tolist()
            for i in range(len(b)):
                assert 12 <= b[i][2] - b[i][0] <= 40 and 0 <= b[i][0] and b[i][2] <= 96 and b[i][3] <= 96
                for j in range(i + 1, len(b)):
                    dx = max(b[j][0] - b[i][2], b[i][0] - b[j][2])  # px of black between the frames, per axis
                    dy = max(b[j][1] - b[i][3], b[i][1] - b[j][3])
                    assert max(dx, dy) >= 1, (b[i], b[j])
                    touching += max(dx, dy) == 1 and min(dx, dy) < 0
        if placement == "packed":
            assert touching >= len(canv)  # every packed canvas has frames exactly 1 px apart
    # the first layout is the one dla detect --eval always had (same canvases, same seed)
    old = detection_canvases(digits, labels, 6, 128, (1, 5), (20, 40), 2026)
    assert torch.equal(eval_canvases(digits, labels, "base", 6).images, old.images)
    mixed = training_canvases(digits, labels, 10, 64, (1, 3), (12, 30), 1, 0.3, seed=5)
    assert len(mixed) == 10 and torch.equal(mixed.images, training_canvases(digits, labels, 10, 64, (1, 3), (12, 30),
                                                                           1, 0.3, seed=5).images)
    assert set(LAYOUTS) == {"base", "small", "large", "crowded", "wide"}


@pytest.mark.parametrize("h, w", [(128, 128), (160, 160), (100, 72), (28, 28)])
def test_the_net_takes_any_size_and_its_grid_is_a_quarter(h, w):
    torch.manual_seed(0)
    net = DenseDetector(Normalize((0.13,), (0.3,)), 1, 10, width=4, fpn=8).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 1, h, w))
    assert out.shape == (2, 14, -(-h // 4), -(-w // 4))
    # the heatmaps start at the focal-loss prior everywhere
    assert torch.sigmoid(out[:, :10]).mean().item() == pytest.approx(0.01, rel=0.5)


# ------------------------------------------------------------- a tiny run, real MNIST


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory, data_root):
    cfg = load_experiment("lab1-fcn-dense", ["budget=smoke", "data.download=false", "track.tracker=none",
                                             "train.epochs=2"])
    return experiment.train(cfg, data_root, run_path=tmp_path_factory.mktemp("dense") / "run")


def test_a_dense_run_keeps_its_calibration_and_detect_reads_it(dense_run, data_root, tmp_path, capsys):
    from PIL import Image

    saved = json.loads((dense_run.path / "detector.json").read_text())
    assert 0.3 <= saved["threshold"] <= 0.95 and len(saved["calibration"]) == 2 and saved["calibration"][0] > 0
    summary = json.loads(dense_run.summary.read_text())
    assert summary["test_threshold"] == saved["threshold"]
    assert {f"test_f1_{g}" for g in LAYOUTS} <= set(summary) and 0 <= summary["test_map50"] <= 1
    for name in ("reliability.png", "detections.png", "curves.png"):
        assert (dense_run.plots / name).stat().st_size > 1000, name
    _, test, _ = load_arrays("mnist", data_root, False)
    canvas = torch.zeros(70, 90, dtype=torch.uint8)
    canvas[5:33, 5:33] = test.x[0, 0]
    Image.fromarray(canvas.numpy()).save(tmp_path / "one.png")
    capsys.readouterr()
    assert main(["--data-root", str(data_root), "detect", str(dense_run.path), str(tmp_path / "one.png"),
                 "--threshold", "0.01"]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith(f"{tmp_path / 'one.png'}: ") and " found" in line
    # --eval: a row per layout and all; the default threshold is the run's
    assert main(["--data-root", str(data_root), "detect", str(dense_run.path), "--eval", "--canvases", "3",
                 "--layouts", "base,wide"]) == 0
    metrics = json.loads((dense_run.path / "detect" / "eval.json").read_text())
    assert metrics["threshold"] == saved["threshold"] and set(metrics["groups"]) == {"base", "wide", "all"}
    assert metrics["digits"] == metrics["groups"]["base"]["digits"] + metrics["groups"]["wide"]["digits"]
    assert (dense_run.path / "detect" / "reliability.png").stat().st_size > 1000


def test_eval_of_a_dense_run_gives_its_test_numbers_again(dense_run, data_root, capsys):
    summary = json.loads(dense_run.summary.read_text())
    assert main(["--data-root", str(data_root), "eval", str(dense_run.path), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["test_f1"] == summary["test_f1"] and again["test_map50"] == summary["test_map50"]
    assert again["detector"]["threshold"] == summary["test_threshold"]


class StopAt(Callback):
    """A callback that interrupts training after a given step, as Ctrl-C would."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, step, model):
        if step == self.step:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_an_interrupted_dense_run_resumes_to_the_same_result(data_root, tmp_path):
    """Each epoch's canvases come from the run's data generator, so a resumed run sees the same ones."""
    from dla import build
    from dla.config import load_run_config
    from dla.rundir import RunDir
    from dla.train.checkpoint import load_weights

    overrides = ["budget=smoke", "data.download=false", "track.tracker=none", "train.epochs=3", "train.precision=fp32"]
    full = experiment.train(load_experiment("lab1-fcn-dense", overrides), data_root, run_path=tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        experiment.train(load_experiment("lab1-fcn-dense", overrides), data_root, callbacks=[StopAt(6)],
                         run_path=tmp_path / "cut")
    cut = RunDir(tmp_path / "cut")
    assert cut.read_summary()["status"] == "interrupted" and len(cut.read_metrics()) == 1
    resumed = experiment.train(load_run_config(cut), data_root, resume=cut)
    a, b = full.read_metrics(), resumed.read_metrics()
    assert len(a) == len(b) == 3
    for ra, rb in zip(a, b):
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], abs=1e-5)
        assert rb["val_loss"] == pytest.approx(ra["val_loss"], abs=1e-5)
    wa, wb = build.model_for(load_run_config(full)), build.model_for(load_run_config(resumed))
    load_weights(wa, full.best_weights)
    load_weights(wb, resumed.best_weights)
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(wa.state_dict().values(), wb.state_dict().values()))


@pytest.mark.slow
def test_a_dense_run_under_torchrun(data_root, tmp_path):
    """Two processes, each with half of every batch (BatchNorm sees 8 canvases, so the numbers are not one
    process's): the run completes on both ranks and keeps its calibration."""
    import os

    from conftest import torchrun

    from dla.rundir import RunDir

    env = {**os.environ, "DLA_DATA_ROOT": str(data_root), "OMP_NUM_THREADS": "1"}
    torchrun("train", "lab1-fcn-dense", "budget=smoke", "data.download=false", "track.tracker=none",
             f"runs_dir={tmp_path}", "run_name=ddp", env=env, launch=("--master_port", "29537"))
    run = RunDir(tmp_path / "lab1-fcn-dense" / "ddp")
    summary = run.read_summary()
    assert summary["processes"] == 2 and summary["status"] == "completed"
    assert json.loads((run.path / "detector.json").read_text())["threshold"] >= 0.3
