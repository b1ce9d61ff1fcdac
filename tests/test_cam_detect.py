"""Lab 1, exercises 2.2 and 2.3: CAM and its relatives, the pointing game, the FCN conversion and detection."""

import json

import pytest
import torch
from conftest import SHARED, need

from dla import experiment
from dla.analysis.cam import class_activation_maps, heatmaps, inside, pointing_game
from dla.analysis.detect import Detections, detect, detection_metrics, match
from dla.build import input_shape, model_for
from dla.cli import CAM_METHODS, main
from dla.config import load_experiment
from dla.data.canvas import detection_canvases, pointing_canvases, with_background
from dla.data.vision import load_arrays
from dla.manifest import read_manifest
from dla.models.fcn import to_fcn


def _warm_bn(model, shape, steps=3):
    """Non-trivial BatchNorm statistics, so that eval mode is not the identity."""
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(torch.rand(8, *shape))
    return model.eval()


def cnn(head, *overrides):
    cfg = load_experiment("lab1-cnn", ["data=mnist", "budget=smoke", f"model.head={head}", *overrides])
    torch.manual_seed(0)
    return _warm_bn(model_for(cfg), input_shape(cfg)), cfg


def test_cam_equals_the_librarys_gradcam_on_a_gap_net():
    model, _ = cnn("gap", "model.width=6")
    x = torch.rand(5, 1, 40, 44)
    classes = torch.tensor([0, 3, 7, 9, 2])
    ours = heatmaps(model, x, classes, "cam")
    library = heatmaps(model, x, classes, "gradcam")
    assert ours.shape == library.shape == (5, 40, 44)
    assert torch.allclose(ours, library, atol=2e-4), (ours - library).abs().max()
    # and the raw CAM is what the logit averages: mean over the map + bias = logit
    raw = class_activation_maps(model, x, classes)
    logits = model(x)
    bias = model.net.head[-1].bias[classes]
    assert torch.allclose(raw.mean((1, 2)) + bias, logits[torch.arange(5), classes], atol=1e-5)


def test_every_library_method_runs_on_the_original_head():
    model, _ = cnn("original", "model.width=4")
    x = torch.rand(2, 1, 28, 28)
    for method in ("gradcam", "gradcam++", "scorecam"):
        maps = heatmaps(model, x, torch.tensor([1, 2]), method)
        assert maps.shape == (2, 28, 28) and maps.min() >= 0 and maps.max() <= 1 + 1e-6
    with pytest.raises(Exception, match="use --method gradcam"):
        heatmaps(model, x, torch.tensor([1, 2]), "cam")


def test_cli_methods_are_the_analysis_methods():
    from dla.analysis.cam import METHODS

    assert tuple(CAM_METHODS) == tuple(METHODS)


@pytest.mark.parametrize("kind", ["mlp", "mlp-bn", "original", "original-skip", "gap", "gap-skip"])
def test_fcn_gives_the_classifiers_logits_at_the_training_size(kind):
    if kind.startswith("mlp"):
        cfg = load_experiment("lab1-mlp", ["model.batchnorm=true"] if kind == "mlp-bn" else [])
        torch.manual_seed(0)
        model = _warm_bn(model_for(cfg), (1, 28, 28))
    else:
        head = kind.split("-")[0]
        extra = ["model.residual=true", "model.depth=17"] if kind.endswith("skip") else []
        model, cfg = cnn(head, "model.width=6", *extra)
    fcn = to_fcn(model, input_shape(cfg))
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        grid = fcn(x)
        logits = model(x)
    assert grid.shape == (4, 10, 1, 1)
    assert torch.allclose(grid[:, :, 0, 0], logits, atol=1e-5)
    with torch.no_grad():
        big = fcn(torch.rand(1, 1, 28 + 3 * fcn.stride, 28 + 2 * fcn.stride))
    assert big.shape == (1, 10, 4, 3)  # one cell per window, fcn.stride px apart


def test_fcn_of_an_mlp_is_exactly_the_classifier_on_each_window():
    cfg = load_experiment("lab1-mlp", [])
    torch.manual_seed(0)
    model = model_for(cfg).eval()
    fcn = to_fcn(model, (1, 28, 28))
    x = torch.rand(2, 1, 36, 41)
    with torch.no_grad():
        grid = fcn(x)
        for i, j in ((0, 0), (5, 3), (8, 13)):
            assert torch.allclose(grid[:, :, i, j], model(x[:, :, i : i + 28, j : j + 28]), atol=1e-5)


def test_canvases_are_deterministic_and_their_boxes_hold_the_digits():
    g = torch.Generator().manual_seed(3)
    digits = (torch.rand(20, 1, 28, 28, generator=g) > 0.7).to(torch.uint8) * 200
    digits[:, :, :4] = 0  # an empty margin, so the ink box is tighter than the frame
    labels = torch.arange(20) % 10
    a = detection_canvases(digits, labels, n=12, size=96, count=(1, 5), sizes=(20, 36), seed=7)
    b = detection_canvases(digits, labels, n=12, size=96, count=(1, 5), sizes=(20, 36), seed=7)
    c = detection_canvases(digits, labels, n=12, size=96, count=(1, 5), sizes=(20, 36), seed=8)
    assert torch.equal(a.images, b.images) and all(torch.equal(p, q) for p, q in zip(a.boxes, b.boxes))
    assert not torch.equal(a.images, c.images)
    for image, boxes, labs in zip(a.images, a.boxes, a.labels):
        assert 1 <= len(boxes) <= 5 and len(boxes) == len(labs)
        covered = torch.zeros(96, 96, dtype=torch.bool)
        for x0, y0, x1, y1 in boxes.long().tolist():
            assert 20 <= x1 - x0 <= 36 and x1 - x0 == y1 - y0 and 0 <= x0 and x1 <= 96 and y1 <= 96
            assert not covered[y0:y1, x0:x1].any(), "frames overlap"
            covered[y0:y1, x0:x1] = True
            assert image[0, y0:y1, x0:x1].any(), "an empty box"
        assert not image[0][~covered].any(), "ink outside every box"
    p = pointing_canvases(digits, labels, n=30, size=64, seed=1)
    assert torch.equal(p.images, pointing_canvases(digits, labels, n=30, size=64, seed=1).images)
    for image, (box,) in zip(p.images, p.boxes):
        x0, y0, x1, y1 = box.long().tolist()
        ink = image[0] > 0
        assert ink[y0:y1, x0:x1].sum() == ink.sum()  # all the ink inside
        assert ink[y0, x0:x1].any() and ink[y1 - 1, x0:x1].any() and ink[y0:y1, x0].any() and ink[y0:y1, x1 - 1].any()


def test_background_class_set():
    digits = torch.zeros(50, 1, 28, 28, dtype=torch.uint8)
    digits[:, :, 8:20, 10:18] = 255
    x, y = with_background(digits, torch.arange(50) % 10, background=10, seed=0)
    assert x.shape == (100, 1, 28, 28) and int((y == 10).sum()) == 50
    bg = x[y == 10]
    assert int((bg.flatten(1).sum(1) == 0).sum()) >= 12  # a quarter are empty
    x2, y2 = with_background(digits, torch.arange(50) % 10, background=10, seed=0)
    assert torch.equal(x, x2) and torch.equal(y, y2)


def test_pointing_game_hits_on_a_toy_map_and_its_baselines():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    assert inside(torch.tensor([[5, 5], [19, 25]]), boxes).tolist() == [True, False]
    assert inside(torch.tensor([[10, 5], [29, 29]]), boxes).tolist() == [False, True]  # x1, y1 exclusive

    class Net(torch.nn.Module):  # no model: the methods are replaced by a map with a known maximum
        pass

    hits = pointing_game(Net(), torch.zeros(2, 1, 32, 32), boxes, torch.tensor([0, 1]), methods=[], seed=0)
    assert hits["centre point"] == 0.0  # (16, 16) is in neither box
    assert set(hits) == {"centre point", "random point"}


def test_match_and_metrics_on_known_boxes():
    gt_boxes = torch.tensor([[0.0, 0.0, 28.0, 28.0], [50.0, 50.0, 80.0, 80.0]])
    gt_labels = torch.tensor([3, 7])
    pred = Detections(torch.tensor([[1.0, 1.0, 29.0, 29.0], [50.0, 50.0, 80.0, 80.0], [90.0, 0.0, 110.0, 20.0]]),
                      torch.tensor([3, 1, 5]), torch.tensor([0.9, 0.8, 0.7]))
    assert match(pred, gt_boxes, gt_labels) == (1, 2, 1)  # the second box has the wrong class
    m = detection_metrics([pred], [gt_boxes], [gt_labels])
    assert (m["precision"], m["recall"]) == (pytest.approx(1 / 3), 0.5)
    perfect = Detections(gt_boxes.clone(), gt_labels.clone(), torch.tensor([0.9, 0.8]))
    m = detection_metrics([perfect], [gt_boxes], [gt_labels])
    assert m["f1"] == 1.0 and m["map50"] == pytest.approx(1.0)


# ------------------------------------------------------------- trained tiny models, real MNIST


@pytest.fixture(scope="module")
def detector(tmp_path_factory, data_root):
    """A smoke-sized detector: the CLI test checks the files and the ranges, which hold for any weights (what
    detection finds is checked with known weights above)."""
    cfg = load_experiment("lab1-fcn", ["budget=smoke", "data.download=false", "track.tracker=none"])
    return experiment.train(cfg, data_root, run_path=tmp_path_factory.mktemp("fcn") / "run")


def template_detector(templates: torch.Tensor, margin: float = 0.8, scale: float = 1.0):
    """An 11-class MNIST MLP (digits + background) with known weights, made fully convolutional: digit c's
    logit is `scale` times the correlation of the window with the centred, unit-norm template c, and the
    background's logit is `margin` times the largest self-correlation. A window is then called digit c only
    where it matches template c better than `margin` of a perfect match (no training: any CPU, any thread count)."""
    cfg = load_experiment("lab1-mlp", ["model.hidden=[20]", "model.dropout=0", "data.background_class=true"])
    model = model_for(cfg).eval()
    flat = templates.flatten(1)
    centred = flat - flat.mean(1, keepdim=True)
    unit = centred / centred.norm(dim=1, keepdim=True)
    std = model.normalize.std.flatten()
    first, last = model.net[1], model.net[-1]
    with torch.no_grad():  # relu(z) - relu(-z) = z: hidden units 0-9 and 10-19 carry +/- the correlation
        first.weight.copy_(torch.cat([unit, -unit]) * std)  # undo Normalize's division (the templates are centred)
        first.bias.zero_()
        last.weight.zero_()
        last.bias.zero_()
        for c in range(10):
            last.weight[c, c], last.weight[c, 10 + c] = scale, -scale
        last.bias[10] = scale * margin * float((unit * flat).sum(1).min())
    return to_fcn(model, (1, 28, 28))


def test_detection_finds_each_digit_where_it_is_with_known_weights(data_root):
    """What `detect` must do for any correct implementation, checked on a detector whose scores are known: two
    digits pasted into a 112x112 canvas are found exactly there (IoU >= 0.9 with their frames), with their
    classes, once each (NMS removes the near-duplicate windows around each peak), and nothing is found on an
    empty canvas. The pyramid's resizing is checked too: the same digits at 1.5x size, looked for at that size."""
    _, test, _ = load_arrays("mnist", data_root, False)
    first = [int(torch.nonzero(test.y == c)[0]) for c in range(10)]
    templates = test.x[first].float() / 255
    fcn = template_detector(templates)
    assert fcn.stride == 1
    canvas = torch.zeros(1, 112, 112)
    canvas[:, 10:38, 20:48] = templates[3]
    canvas[:, 60:88, 70:98] = templates[7]
    truth = torch.tensor([[20.0, 10.0, 48.0, 38.0], [70.0, 60.0, 98.0, 88.0]])
    found = detect(fcn, canvas, background=10, threshold=0.5, step=1, sizes=(28,))
    assert sorted(found.labels.tolist()) == [3, 7], found
    assert match(found, truth, torch.tensor([3, 7]), iou=0.9) == (2, 0, 0)
    assert len(detect(fcn, torch.zeros(1, 112, 112), background=10, threshold=0.5, step=1, sizes=(28,)).scores) == 0

    big = torch.nn.functional.interpolate(canvas[None], scale_factor=1.5, mode="bilinear", align_corners=False)[0]
    found = detect(fcn, big, background=10, threshold=0.5, step=1, sizes=(42,))
    assert match(found, truth * 1.5, torch.tensor([3, 7]), iou=0.7) == (2, 0, 0), found


@pytest.mark.slow
def test_detect_cli_writes_its_files(detector, data_root, tmp_path, capsys):
    from PIL import Image

    _, test, _ = load_arrays("mnist", data_root, False)
    canvas = torch.zeros(80, 100, dtype=torch.uint8)
    canvas[10:38, 10:38] = test.x[0, 0]
    canvas[40:76, 55:91] = torch.nn.functional.interpolate(test.x[1:2].float(), size=(36, 36)).to(torch.uint8)[0, 0]
    Image.fromarray(canvas.numpy()).save(tmp_path / "two digits.png")
    assert main(["--data-root", str(data_root), "detect", str(detector.path), str(tmp_path / "two digits.png"),
                 "--eval", "--canvases", "6", "--layouts", "base,crowded"]) == 0
    out = capsys.readouterr().out
    assert "two digits.png:" in out and "| precision | recall | F1 | mAP@0.5 |" in out
    folder = detector.path / "detect"
    for name in ("two_digits.png", "two_digits-heat.png", "eval-examples.png"):
        assert (folder / name).stat().st_size > 1000, name
    assert "| precision | recall | F1 |" in (folder / "eval.md").read_text()
    metrics = json.loads((folder / "eval.json").read_text())
    assert 0 <= metrics["f1"] <= 1 and metrics["digits"] >= 18 and metrics["canvases"] == 6
    assert set(metrics["groups"]) == {"base", "crowded", "all"} and metrics["sizes"] == [20, 24, 28, 34, 40]
    assert metrics["digits"] == metrics["groups"]["base"]["digits"] + metrics["groups"]["crowded"]["digits"]
    manifest = read_manifest(folder)
    assert manifest["title"] == "Digit detection" and manifest["metrics"] == "eval.json"
    assert [f["file"] for f in manifest["figures"]] == ["two_digits.png", "two_digits-heat.png", "eval-examples.png",
                                                        "reliability.png"]


@pytest.fixture(scope="module")
def gap_run(tmp_path_factory, data_root):
    cfg = load_experiment("lab1-cnn", ["budget=smoke", "data=mnist", "model.head=gap", "model.width=4",
                                       "data.train_subset=1024", "data.download=false", "track.tracker=none"])
    return experiment.train(cfg, data_root, run_path=tmp_path_factory.mktemp("gap") / "run")


@pytest.mark.slow
def test_cam_cli_gallery_images_and_pointing_game(gap_run, data_root, tmp_path, capsys):
    from PIL import Image

    Image.new("L", (28, 28)).save(tmp_path / "blank.png")
    Image.new("RGB", (40, 36), (200, 10, 10)).save(tmp_path / "red.jpg")
    root = ["--data-root", str(data_root)]
    assert main([*root, "cam", str(gap_run.path), "--n", "6"]) == 0
    assert main([*root, "cam", str(gap_run.path), str(tmp_path / "blank.png"), str(tmp_path / "red.jpg"),
                 "--method", "gradcam++", "--class", "3"]) == 0
    assert main([*root, "cam", str(gap_run.path), "--pointing-game", "--canvases", "12", "--canvas-size", "48"]) == 0
    out = capsys.readouterr().out
    folder = gap_run.path / "cam"
    for name in ("gallery-cam.png", "gradcam++/blank.png", "gradcam++/red.png", "pointing-game.png"):
        assert (folder / name).stat().st_size > 1000, name
    md = (folder / "cam.md").read_text()
    assert "## cam" in md and "## gradcam++" in md and "class 3" in md
    result = json.loads((folder / "pointing-game.json").read_text())
    assert set(result["hits"]) == {"cam", "gradcam", "gradcam++", "scorecam", "centre point", "random point"}
    assert all(0 <= v <= 1 for v in result["hits"].values())
    captions = {f["file"]: f["caption"] for f in read_manifest(folder)["figures"]}  # every command's, merged
    assert set(captions) == {"gallery-cam.png", "gradcam++/blank.png", "gradcam++/red.png", "pointing-game.png"}
    assert captions["gradcam++/red.png"].startswith("gradcam++ of red.jpg: predicted ")
    assert "| scorecam |" in out and "| random point |" in out


@pytest.mark.slow
def test_training_on_canvases(data_root):
    cfg = load_experiment("lab1-cnn", ["budget=smoke", "data=mnist", "model.head=gap", "data.canvas=48",
                                       "data.train_subset=256", "data.val_size=64", "data.test_subset=64",
                                       "data.download=false", "track.tracker=none"])
    assert input_shape(cfg) == (1, 48, 48)
    run = experiment.train(cfg, data_root)
    assert "48x48 canvases" in run.read_summary()["data"]
