"""Lab 3.1/3.3: OOD scores, metrics, ODIN and its grid, Mahalanobis, and `dla ood` end to end."""

import json
import re

import numpy as np
import pytest
import torch
from conftest import FASHION_SYSTEM, need
from sklearn.metrics import average_precision_score, roc_auc_score

from dla import experiment
from dla.analysis import ood
from dla.analysis.ood_study import run_odin_grid, run_ood
from dla.config import load_experiment
from dla.data.ood import ood_images, to_shape
from dla.manifest import read_manifest
from dla.models import build_model
from dla.models.mlp import MLPConfig


def toy_model(seed=0, in_shape=(1, 4, 4), classes=3):
    torch.manual_seed(seed)
    return build_model(MLPConfig(hidden=[16], dropout=0.0), in_shape, classes, (0.5,), (0.25,)).eval()


def test_scores_on_known_logits():
    logits = torch.tensor([[2.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    assert torch.allclose(ood.msp(logits), torch.tensor([np.exp(2) / (np.exp(2) + 2), 1 / 3], dtype=torch.float32))
    assert torch.equal(ood.max_logit(logits), torch.tensor([2.0, 1.0]))
    assert torch.allclose(ood.energy(logits), torch.logsumexp(logits, 1))
    assert torch.allclose(ood.energy(logits, 2.0), 2.0 * torch.logsumexp(logits / 2.0, 1))


def test_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    s_id, s_ood = rng.normal(1.0, 1.0, 300), rng.normal(0.0, 1.0, 200)
    m = ood.ood_metrics(s_id, s_ood)
    labels = np.r_[np.ones(300), np.zeros(200)]
    scores = np.r_[s_id, s_ood]
    assert m["auroc"] == pytest.approx(roc_auc_score(labels, scores))
    assert m["aupr_in"] == pytest.approx(average_precision_score(labels, scores))
    assert m["aupr_out"] == pytest.approx(average_precision_score(1 - labels, -scores))
    # FPR@95: the share of OOD scores at or above the threshold that keeps 95% of ID scores
    threshold = np.sort(s_id)[::-1][int(np.ceil(0.95 * 300)) - 1]
    assert m["fpr95"] == pytest.approx(np.mean(s_ood >= threshold))


def test_perfect_and_inverted_detectors():
    perfect = ood.ood_metrics([0.9, 0.8, 0.95], [0.1, 0.2])
    assert perfect == {"auroc": 1.0, "aupr_in": 1.0, "aupr_out": 1.0, "fpr95": 0.0}
    assert ood.ood_metrics([0.1, 0.2], [0.9, 0.8])["auroc"] == 0.0


def test_odin_at_t1_eps0_is_msp():
    model, x = toy_model(), torch.rand(20, 1, 4, 4)
    assert torch.allclose(ood.odin(model, x, temperature=1.0, eps=0.0), ood.msp(ood.logits_of(model, x)))


def test_odin_step_raises_the_tempered_max_softmax():
    model, x = toy_model(), torch.rand(50, 1, 4, 4) * 0.5 + 0.25
    before = ood.odin(model, x, temperature=10.0, eps=0.0)
    after = ood.odin(model, x, temperature=10.0, eps=0.01)
    assert (after >= before - 1e-6).float().mean() > 0.9


def test_shared_gradient_grid_equals_naive_grid():
    model, x = toy_model(), torch.rand(30, 1, 4, 4)
    temps, epss = (1, 10, 1000), (0, 0.001, 0.02)
    fast = ood.odin_grid(model, x, temps, epss, batch_size=16)
    slow = ood.odin_grid_naive(model, x, temps, epss, batch_size=16)
    assert set(fast) == set(slow)
    for key in fast:
        assert torch.allclose(fast[key], slow[key], atol=1e-6), key


def test_mahalanobis_matches_manual_distances():
    model = toy_model(classes=2)
    x = torch.rand(200, 1, 4, 4)
    y = (x.mean((1, 2, 3)) > 0.5).long()
    maha = ood.Mahalanobis.fit(model, x, y)
    with torch.no_grad():
        feats = ood.penultimate(model, x)[0].double().numpy()
    means = np.stack([feats[y.numpy() == c].mean(0) for c in (0, 1)])
    cov = np.cov((feats - means[y.numpy()]).T, bias=True)
    prec = np.linalg.pinv(cov, hermitian=True)
    diff = feats[:5] - means[0]
    manual = np.einsum("nd,de,ne->n", diff, prec, diff)
    got = maha.distances(torch.tensor(feats[:5], dtype=torch.float32))[:, 0].numpy()
    assert np.allclose(got, manual, rtol=1e-3)
    far = torch.rand(20, 1, 4, 4) * 40 - 20  # far outside [0, 1]: must look much less in-distribution
    assert maha.scores(model, far).max() < maha.scores(model, x).median()


def test_ood_images_adapt_shape(data_root):
    x = ood_images("mnist", (3, 32, 32), data_root, 8, download=False)
    assert x.shape == (8, 3, 32, 32) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert torch.equal(x[:, 0], x[:, 1])  # grey tiled to RGB
    assert to_shape(torch.rand(2, 3, 32, 32), (1, 28, 28)).shape == (2, 1, 28, 28)
    assert ood_images("noise-gaussian", (1, 28, 28), data_root, 4).shape == (4, 1, 28, 28)


def test_online_only_sets_fail_offline_with_the_alternatives(tmp_path):
    from dla.errors import DataError

    with pytest.raises(DataError, match="svhn comes from torchvision and needs a network.*offline use: mnist"):
        ood_images("svhn", (3, 32, 32), tmp_path, 10, download=False)


@pytest.fixture
def fashion_run(data_root, tmp_path):
    need(FASHION_SYSTEM, "Debian's dataset-fashion-mnist")
    cfg = load_experiment("lab1-cnn", ["budget=smoke", "data=fashion-mnist", "train.epochs=2", "track.tracker=none",
                                       "data.classes=[0,1,2,3,4,5]", "run_name=ood"])
    return experiment.train(cfg, data_root)


@pytest.mark.slow
def test_dla_ood_writes_table_and_plots(fashion_run, data_root):
    folder = fashion_run.path.parent / "my scans"
    folder.mkdir()
    for i in range(12):
        _save(folder / f"{i}.png", "RGB" if i % 2 else "L", (30 + i, 40), i)
    rows = run_ood(fashion_run, ["mnist", "noise-uniform", "heldout", str(folder)], list(ood.DETECTORS), data_root, n=200)
    assert len(rows) == 4 * len(ood.DETECTORS)
    assert {r["ood"] for r in rows} == {"mnist", "noise-uniform", "heldout", "my_scans"}
    assert all(0.0 <= r["auroc"] <= 1.0 and 0.0 <= r["fpr95"] <= 1.0 for r in rows)
    out = fashion_run.path / "ood"
    table = (out / "table.md").read_text()
    assert "| heldout | mahalanobis |" in table and "classes 0,1,2,3,4,5" in table
    assert len(json.loads((out / "metrics.json").read_text())) == len(rows)
    for name in ("mnist", "noise-uniform", "heldout"):
        assert (out / f"hist_{name}.png").stat().st_size > 5000 and (out / f"roc_pr_{name}.png").stat().st_size > 5000

    rows = run_ood(fashion_run, ["near", "far"], ["msp", "knn"], data_root, n=100)
    assert {(r["ood"], r["group"]) for r in rows} == {("heldout", "near"), ("mnist", "far"), ("noise-uniform", "far"),
                                                      ("noise-gaussian", "far")}
    table = (out / "table.md").read_text()
    far_knn = np.mean([r["auroc"] for r in rows if r["group"] == "far" and r["detector"] == "knn"])
    summary = table.split("Mean AUROC per group")[1]
    assert "| detector | near AUROC (heldout) | near FPR@95 | far AUROC (mnist, noise-uniform, noise-gaussian) |" in summary
    assert f"| knn | {next(r['auroc'] for r in rows if r['group'] == 'near' and r['detector'] == 'knn'):.4f} |" in summary
    assert f"{far_knn:.4f}" in summary

    result = run_odin_grid(fashion_run, "mnist", data_root, n=100, temperatures=(1, 1000), epsilons=(0, 0.002, 0.02))
    assert result["baseline"]["T"] == 1 and result["baseline"]["eps"] == 0
    assert result["best_on_val"]["val"] >= result["baseline"]["val"]
    assert len(result["cells"]) == 6 and set(result["cells"][0]["test"]) == {"auroc", "aupr_in", "aupr_out", "fpr95"}
    grid_md = (out / "odin_grid.md").read_text()
    assert "AUPR-Out on the validation half" in grid_md and "FPR@95TPR on the validation half" in grid_md
    assert "\n\n\n" not in grid_md and grid_md.startswith("# ODIN grid: ID Fashion-MNIST (classes 0,1,2,3,4,5) vs OOD mnist")
    assert grid_md.endswith("|\n")
    for name in ("odin_grid.md", "odin_grid.json", "odin_heatmap.png", "odin_auroc_vs_eps.png"):
        assert (out / name).is_file()
    manifest = read_manifest(out)  # both commands' outputs, described by the study that wrote them
    captions = {f["file"]: f["caption"] for f in manifest["figures"]}
    assert captions["hist_heldout.png"] == "ID vs OOD score histograms: heldout" and "hist_my_scans.png" in captions
    assert captions["odin_heatmap.png"].startswith("ODIN AUROC over T × ε")
    assert [t["file"] for t in manifest["tables"]] == ["table.md", "odin_grid.md"] and manifest["metrics"] == "metrics.json"


def test_near_and_far_groups_follow_openood_and_the_runs_classes():
    from dla.data.ood import expand_groups
    from dla.errors import DlaError

    six = load_experiment("lab1-cnn", ["data=cifar10", "data.classes=[0,1,2,3,4,5]"])
    assert expand_groups(six, ["near", "far", "fakedata"]) == [
        ("heldout", "near"), ("cifar100", "near"), ("mnist", "far"), ("noise-uniform", "far"),
        ("noise-gaussian", "far"), ("svhn", "far"), ("fakedata", None)]
    ten = load_experiment("lab1-cnn", ["data=fashion-mnist", "data.download=false"])
    assert [s for s, _ in expand_groups(ten, ["far"])] == ["mnist", "noise-uniform", "noise-gaussian"]
    with pytest.raises(DlaError, match="held-out classes of a run trained with data.classes"):
        expand_groups(ten, ["near"])  # no held-out classes and no offline near set
    offline = load_experiment("lab1-cnn", ["data=cifar10", "data.download=false"])
    with pytest.raises(DlaError, match="held-out classes"):
        expand_groups(offline, ["near"])  # only cifar100, which needs a network
    assert expand_groups(load_experiment("lab1-cnn", ["data=cifar10"]), ["near"]) == [("cifar100", "near")]


def test_fakedata_is_torchvisions_seeded_speckle():
    x = ood_images("fakedata", (3, 32, 32), None, 6, seed=1)
    assert x.shape == (6, 3, 32, 32) and float(x.min()) >= 0 and float(x.max()) <= 1
    assert torch.equal(x, ood_images("fakedata", (3, 32, 32), None, 6, seed=1))
    assert not torch.equal(x, ood_images("fakedata", (3, 32, 32), None, 6, seed=2))
    assert 0.4 < float(x.mean()) < 0.6  # randn through ToPILImage wraps around: a speckle over the whole range


def test_the_command_line_lists_every_detector():
    from dla.cli import DETECTORS

    assert tuple(DETECTORS) == tuple(ood.DETECTORS)


def _save(path, mode, size, seed):
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    c = 1 if mode == "L" else 3
    arr = torch.randint(0, 256, (size[1], size[0], c), generator=g, dtype=torch.uint8).numpy()
    Image.fromarray(arr[..., 0] if c == 1 else arr, mode).save(path)


def test_user_ood_folder_and_npz_adapt_to_the_runs_shape(tmp_path):
    from dla.data.ood import user_images, user_set_label

    folder = tmp_path / "my photos"
    (folder / "sub").mkdir(parents=True)
    _save(folder / "a.png", "L", (40, 30), 0)
    _save(folder / "b.jpg", "RGB", (64, 64), 1)
    _save(folder / "sub" / "c.bmp", "RGB", (20, 50), 2)
    (folder / "notes.txt").write_text("not an image, and not an image suffix: skipped")
    x = user_images(str(folder), (1, 28, 28), n=10)
    assert x.shape == (3, 1, 28, 28) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert user_images(str(folder), (3, 32, 32), n=2).shape == (2, 3, 32, 32)
    assert user_set_label(str(folder)) == "my_photos"
    nhwc = np.random.default_rng(0).integers(0, 256, (7, 30, 30, 3), dtype=np.uint8)
    np.savez(tmp_path / "mine.npz", images=nhwc)
    x = user_images(str(tmp_path / "mine.npz"), (1, 28, 28), n=5)
    assert x.shape == (5, 1, 28, 28)
    full = user_images(str(tmp_path / "mine.npz"), (3, 30, 30), n=100)
    assert torch.allclose(full, torch.from_numpy(nhwc).permute(0, 3, 1, 2).float() / 255)
    np.savez(tmp_path / "floats.npz", images=np.full((4, 1, 28, 28), 0.25, dtype=np.float32))
    assert float(user_images(str(tmp_path / "floats.npz"), (1, 28, 28), n=4).mean()) == pytest.approx(0.25)
    assert user_set_label(str(tmp_path / "floats.npz")) == "floats"


@pytest.mark.parametrize("kind, expect", [
    ("empty", "no image files"), ("damaged", "broken.png"), ("no-images-key", "no 'images' array"),
    ("bad-shape", "'images' must be"), ("out-of-range", "in [0, 1]"), ("missing", "no such folder"),
    ("garbage-npz", "damaged .npz"), ("text-file", "a folder of images or an .npz"),
])
def test_user_ood_sets_refuse_bad_files_in_one_line(tmp_path, kind, expect):
    from dla.data.ood import user_images
    from dla.errors import DlaError

    target = tmp_path / "set"
    if kind == "empty":
        target.mkdir()
    elif kind == "damaged":
        target.mkdir()
        _save(target / "ok.png", "L", (28, 28), 0)
        (target / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    elif kind == "no-images-key":
        target = tmp_path / "set.npz"
        np.savez(target, pictures=np.zeros((2, 28, 28), np.uint8))
    elif kind == "bad-shape":
        target = tmp_path / "set.npz"
        np.savez(target, images=np.zeros((2, 5, 28, 28), np.uint8))
    elif kind == "out-of-range":
        target = tmp_path / "set.npz"
        np.savez(target, images=np.full((2, 28, 28), 3.0, np.float32))
    elif kind == "garbage-npz":
        target = tmp_path / "set.npz"
        target.write_bytes(b"PK\x03\x04 garbage")
    elif kind == "text-file":
        target = tmp_path / "set.csv"
        target.write_text("a,b\n")
    with pytest.raises(DlaError, match=re.escape(expect)) as info:
        user_images(str(target), (1, 28, 28), n=10)
    assert "\n" not in str(info.value)
