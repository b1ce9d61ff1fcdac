"""Lab 3.2: FGSM and PGD cross-checked against torchattacks, PGD's constraints, adversarial training, `dla attack`."""

import pytest
import torch
import torchattacks
from conftest import tiny_config

from dla import experiment
from dla.analysis.adversarial import parse_eps
from dla.attacks import fgsm, pgd
from dla.cli import main
from dla.manifest import read_manifest
from dla.models import build_model
from dla.models.cnn import CNNConfig
from dla.models.mlp import MLPConfig


@pytest.fixture(scope="module")
def model_and_batch():
    torch.manual_seed(0)
    model = build_model(CNNConfig(depth=9, width=4, fc_width=16), (1, 28, 28), 10, (0.5,), (0.3,)).eval()
    x = torch.rand(16, 1, 28, 28)
    y = torch.randint(0, 10, (16,))
    return model, x, y


def test_fgsm_matches_torchattacks(model_and_batch):
    model, x, y = model_and_batch
    ours = fgsm(model, x, y, eps=8 / 255)
    theirs = torchattacks.FGSM(model, eps=8 / 255)(x, y)
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_pgd_matches_torchattacks(model_and_batch):
    model, x, y = model_and_batch
    ours = pgd(model, x, y, eps=8 / 255, alpha=2 / 255, steps=5, random_start=False)
    theirs = torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=5, random_start=False)(x, y)
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_pgd_stays_in_the_ball_and_the_image_range(model_and_batch):
    model, x, y = model_and_batch
    eps = 0.1
    adv = pgd(model, x, y, eps=eps, steps=7, generator=torch.Generator().manual_seed(1))
    assert float((adv - x).abs().max()) <= eps + 1e-6
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    assert not torch.equal(adv, x)


def test_attacks_raise_the_loss_and_targeted_fgsm_lowers_the_target_loss(model_and_batch):
    model, x, y = model_and_batch
    def ce(inp, lab):
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(model(inp), lab))

    assert ce(fgsm(model, x, y, 0.1), y) > ce(x, y)
    assert ce(pgd(model, x, y, 0.1, steps=5), y) > ce(fgsm(model, x, y, 0.1), y) - 1e-3
    target = (y + 1) % 10
    assert ce(fgsm(model, x, target, 0.1, targeted=True), target) < ce(x, target)


def test_targeted_fgsm_and_pgd_match_torchattacks_targeted_mode(model_and_batch):
    model, x, y = model_and_batch
    target = (y + 3) % 10
    theirs = torchattacks.FGSM(model, eps=8 / 255)
    theirs.set_mode_targeted_by_function(lambda images, labels: labels)
    assert torch.allclose(fgsm(model, x, target, 8 / 255, targeted=True), theirs(x, target), atol=1e-6)
    theirs = torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=5, random_start=False)
    theirs.set_mode_targeted_by_function(lambda images, labels: labels)
    ours = pgd(model, x, target, eps=8 / 255, alpha=2 / 255, steps=5, random_start=False, targeted=True)
    assert torch.allclose(ours, theirs(x, target), atol=1e-6)


def test_targeted_success_rate_on_a_toy_model_with_known_gradients():
    """logits (x0, x1, 0.5) at x = (0.8, 0.2): a targeted step of eps moves x0 down and x1 up (to class 1)
    or both down (to class 2); either target wins exactly when eps > 0.3."""
    from dla.analysis.adversarial import accuracy_under_attack, choose_targets

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2, 3))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
        model[1].bias.copy_(torch.tensor([0.0, 0.0, 0.5]))
    x = torch.tensor([0.8, 0.2]).view(1, 1, 1, 2).repeat(4, 1, 1, 1)
    y = torch.zeros(4, dtype=torch.long)
    targets = torch.tensor([1, 1, 2, 2])
    for method in ("fgsm", "pgd"):
        rows = accuracy_under_attack(model, x, y, method, [0.0, 0.2, 0.35], steps=1, targets=targets)
        assert [r["success"] for r in rows] == [0.0, 0.0, 1.0], method
        assert [r["acc"] for r in rows] == [1.0, 1.0, 0.0], method
    assert choose_targets(model, x, y, "least-likely", 3).tolist() == [1, 1, 1, 1]  # 0.2 < 0.5 < 0.8
    labels = torch.randint(0, 10, (500,), generator=torch.Generator().manual_seed(1))
    random = choose_targets(None, None, labels, "random", 10)
    assert not (random == labels).any() and len(set(random.tolist())) == 10
    assert choose_targets(None, None, labels, 7, 10).eq(7).all()


def _toy_linear():
    """logits (x0, x1, 0.5) of a 2-pixel image: at x = (0.8, 0.2) the class is 0; the nearest other
    class in L2 is 2 (x0 down to 0.5: distance 0.3), class 1 is 0.6 / sqrt(2) ~ 0.42 away."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2, 3))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
        model[1].bias.copy_(torch.tensor([0.0, 0.0, 0.5]))
    return model.eval()


def test_cw_finds_the_known_minimal_l2_perturbation():
    from dla.analysis.adversarial import cw_rows

    x = torch.tensor([0.8, 0.2]).view(1, 1, 1, 2).repeat(4, 1, 1, 1)
    y = torch.zeros(4, dtype=torch.long)
    rows, median_l2 = cw_rows(_toy_linear(), x, y, [0.0, 0.25, 0.6], steps=100, cs=[1.0])
    assert 0.3 <= median_l2 < 0.4  # no perturbation under 0.3 can change the class
    assert [r["acc"] for r in rows] == [1.0, 1.0, 0.0] and rows[0]["n"] == 4


def test_cw_with_several_c_keeps_each_images_smallest_successful_perturbation(monkeypatch):
    from dla.analysis import adversarial

    # the toy model is class 0 at (0.8, 0.2); (0.45, 0.2) is class 2 at L2 0.35, (0.2, 0.2) class 2 at L2 0.6
    x = torch.tensor([0.8, 0.2]).view(1, 1, 1, 2).repeat(2, 1, 1, 1)
    y = torch.zeros(2, dtype=torch.long)
    near, far = torch.tensor([0.45, 0.2]).view(1, 1, 2), torch.tensor([0.2, 0.2]).view(1, 1, 2)
    made = {1.0: torch.stack([near, x[1]]), 2.0: torch.stack([far, near])}  # c=1 misses image 1; c=2 is far on image 0
    monkeypatch.setattr(adversarial, "attack", lambda method, model, xb, yb, eps, steps, c: made[c].clone())
    model = _toy_linear()
    one = adversarial.cw_rows(model, x, y, [0.4, 0.7], cs=[1.0])[0]
    two = adversarial.cw_rows(model, x, y, [0.4, 0.7], cs=[2.0])[0]
    keep = {}
    both, median_l2 = adversarial.cw_rows(model, x, y, [0.4, 0.7], cs=[1.0, 2.0], keep=keep)
    assert [r["acc"] for r in one] == [0.5, 0.5] and [r["acc"] for r in two] == [0.5, 0.0]
    assert [r["acc"] for r in both] == [0.0, 0.0] and median_l2 == pytest.approx(0.35)
    assert torch.equal(keep["cw"], torch.stack([near, near]))  # the gallery shows the kept perturbations


def test_autoattack_never_reports_more_robust_accuracy_than_pgd(monkeypatch):
    from dla import attacks
    from dla.analysis.adversarial import accuracy_under_attack

    assert (attacks.AUTOATTACK_ITERATIONS, attacks.SQUARE_QUERIES) == (100, 5000)  # the standard version's budget
    monkeypatch.setattr(attacks, "AUTOATTACK_ITERATIONS", 25)  # smaller budgets keep the test short
    monkeypatch.setattr(attacks, "SQUARE_QUERIES", 300)
    torch.manual_seed(0)
    centres = torch.rand(4, 1, 4, 4)
    y = torch.arange(4).repeat(30)
    x = (centres[y] + 0.08 * torch.randn(120, 1, 4, 4)).clamp(0, 1)
    model = build_model(MLPConfig(hidden=[32], dropout=0.0), (1, 4, 4), 4, (0.5,), (0.25,))
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    eps = [0.0, 0.1, 0.2]
    pgd_rows = accuracy_under_attack(model, x, y, "pgd", eps, steps=20)
    aa_rows = accuracy_under_attack(model, x, y, "autoattack", eps)
    assert pgd_rows[0]["acc"] == aa_rows[0]["acc"] == aa_rows[0]["clean"] > 0.95 and aa_rows[0]["n"] == 120
    assert all(a["acc"] <= p["acc"] for a, p in zip(aa_rows, pgd_rows)), (aa_rows, pgd_rows)
    assert aa_rows[-1]["acc"] < aa_rows[0]["acc"]  # the budget is large enough to break some
    adv = attacks.autoattack(model, x, y, 0.1, num_classes=4)
    assert (adv - x).abs().max() <= 0.1 + 1e-6 and adv.min() >= 0 and adv.max() <= 1


def test_the_gallery_reuses_the_tables_adversarial_images(model_and_batch, tmp_path, monkeypatch):
    from dla.analysis import adversarial

    model, x, y = model_and_batch
    kept = {}
    adversarial.accuracy_under_attack(model, x, y, "pgd", [0.0, 0.1], steps=2, keep=kept)
    assert set(kept) == {0.0, 0.1} and kept[0.1].shape == (adversarial.GALLERY, *x.shape[1:])
    monkeypatch.setattr(adversarial, "attack", lambda *a, **k: pytest.fail("attacked the gallery's images again"))
    out = adversarial.plot_gallery(model, x[:6], y[:6], [str(i) for i in range(10)], "pgd", [0.0, 0.1],
                                   tmp_path / "g.png", adversarials=kept)
    assert out.stat().st_size > 5000


def test_parse_eps():
    assert parse_eps("0, 8/255,0.1") == [0.0, 8 / 255, 0.1]
    with pytest.raises(ValueError, match="--eps"):
        parse_eps("8/0")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fgsm_rs", "pgd"])
def test_adversarial_training_end_to_end_and_dla_attack(data_root, method, monkeypatch):
    cfg = tiny_config("run_name=adv", f"train.adversarial={method}", "train.adv_eps=0.1", "train.adv_steps=2",
                      "train.epochs=2")
    run = experiment.train(cfg, data_root)
    assert run.read_summary()["status"] == "completed" and run.read_summary()["test_acc"] > 0.3
    monkeypatch.setenv("DLA_DATA_ROOT", str(data_root))
    assert main(["attack", str(run.path), "--method", "pgd", "--eps", "0,0.05,0.1", "--n", "64", "--steps", "3"]) == 0
    out = run.path / "attack"
    table = (out / "pgd.md").read_text()
    rows = [line.split("|") for line in table.splitlines() if line.startswith("| 0")]
    accs = [float(r[3]) for r in rows]
    assert [r[1].strip() for r in rows] == ["0", "0.05", "0.1"] and accs[-1] <= accs[0]
    accs_pgd = accs
    assert (out / "pgd_accuracy.png").is_file() and (out / "pgd_gallery.png").stat().st_size > 5000
    assert main(["attack", str(run.path), "--method", "fgsm", "--eps", "0,0.2", "--n", "64", "--target", "least-likely"]) == 0
    table = (out / "fgsm_target-least-likely.md").read_text()
    assert "| target success (%) |" in table.splitlines()[2] and "targeted (least-likely)" in table
    assert (out / "fgsm_target-least-likely_gallery.png").stat().st_size > 5000
    if method == "pgd":  # AutoAttack at the default eps for grey images, and CW, on a few images
        assert main(["attack", str(run.path), "--method", "autoattack", "--n", "8"]) == 0
        table = (out / "autoattack.md").read_text()
        assert "| robust accuracy (%) | images |" in table and "| 0.1 | 25.5 |" in table and "APGD-T" in table
        assert main(["attack", str(run.path), "--method", "cw", "--n", "16", "--c", "10"]) == 0
        table = (out / "cw.md").read_text()
        rows = [line.split("|") for line in table.splitlines() if line.startswith("| 0.") or line.startswith("| 1.")]
        accs = [float(r[2]) for r in rows]
        assert [r[1].strip() for r in rows] == ["0.0000", "0.1000", "0.2500", "0.5000", "1.0000"] and accs[-1] < accs[0]
        assert "median L2 of successful perturbations" in table and (out / "cw_gallery.png").stat().st_size > 5000
    series = {s["name"]: s for s in read_manifest(out)["series"]}  # the points the report plots
    assert series["PGD"]["plot"] == "accuracy-vs-eps"
    assert [p[0] for p in series["PGD"]["points"]] == pytest.approx([0, 0.05 * 255, 0.1 * 255])
    assert [p[1] for p in series["PGD"]["points"]] == pytest.approx(accs_pgd, abs=0.051)  # the table's, to 0.1
    assert "FGSM targeted (least-likely)" in series and (method != "pgd" or series["CW"]["plot"] == "accuracy-vs-l2")


def test_the_originals_fgsm_recipe_with_adv_prob_0_is_standard_training(data_root):
    """train.adversarial=fgsm with adv_prob=0 draws nothing and trains exactly as the standard recipe."""
    base = ["train.epochs=1", "data.train_subset=512", "model.dropout=0.0"]
    plain = experiment.train(tiny_config("run_name=plain", *base), data_root)
    recipe = experiment.train(tiny_config("run_name=recipe", *base, "train.adversarial=fgsm", "train.adv_prob=0",
                                          "train.adv_eps_dist=uniform", "train.adv_eps=0.3"), data_root)
    assert plain.read_metrics()[0]["train_loss"] == recipe.read_metrics()[0]["train_loss"]
    assert plain.read_summary()["test_loss"] == recipe.read_summary()["test_loss"]
    attacked = experiment.train(tiny_config("run_name=attacked", *base, "train.adversarial=fgsm", "train.adv_prob=0.5",
                                            "train.adv_eps_dist=uniform", "train.adv_eps=0.3"), data_root)
    assert attacked.read_metrics()[0]["train_loss"] != plain.read_metrics()[0]["train_loss"]


def test_adversarial_batch_replaces_about_adv_prob_of_the_batches_at_uniform_eps(monkeypatch):
    from dla.config import TrainConfig
    from dla.train import tasks

    seen = []
    monkeypatch.setattr(tasks, "fgsm", lambda model, x, y, eps: seen.append(eps) or x + 1)
    cfg = TrainConfig(adversarial="fgsm", adv_prob=0.5, adv_eps_dist="uniform", adv_eps=0.2)
    g = torch.Generator().manual_seed(0)
    x, y = torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.long)
    replaced = sum(bool((tasks.adversarial_batch(None, x, y, cfg, g) != x).any()) for _ in range(400))
    assert 160 <= replaced <= 240 and len(seen) == replaced
    assert all(0 < e < 0.2 for e in seen) and max(seen) > 0.15 and min(seen) < 0.05
    fixed = TrainConfig(adversarial="fgsm", adv_eps=0.2)
    seen.clear()
    for _ in range(5):
        tasks.adversarial_batch(None, x, y, fixed, g)
    assert seen == [0.2] * 5


class _FirstPixelClassifier(torch.nn.Module):
    """Predicts the class written in each image's first pixel (0, 1 or 2): a model whose answers a test sets."""

    def forward(self, x):
        return torch.nn.functional.one_hot(x.flatten(1)[:, 0].round().long().clamp(0, 2), 3).float()


def test_autoattack_stages_run_on_what_the_ones_before_left_correct(monkeypatch):
    from dla import attacks
    from dla.analysis.adversarial import accuracy_under_attack

    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    x = torch.zeros(8, 1, 2, 2)
    x[:, 0, 0, 0] = y.float()
    x[7, 0, 0, 0] = 2.0  # image 7 is misclassified before any attack
    x[:, 0, 1, 1] = torch.arange(8).float()  # each image's index, so a stage can pick its victims
    seen = []

    def flip(victims):  # an attack that fools the model on the images whose index is in `victims`
        def run(xb, yb):
            seen.append(xb[:, 0, 1, 1].long().tolist())
            out = xb.clone()
            hit = torch.tensor([int(i) in victims for i in xb[:, 0, 1, 1]])
            out[hit, 0, 0, 0] = ((yb[hit] + 1) % 3).float()
            out[:, 0, 0, 1] = 0.5  # every returned image is marked, fooled or not
            return out
        return run

    model = _FirstPixelClassifier()
    stages = [("A", flip({0, 1})), ("B", flip({1, 2, 7})), ("C", flip(set())), ("D", flip({3}))]
    adv, left = attacks.run_stages(model, x, y, stages)
    assert left == [5, 4, 4, 3]  # 7 correct clean; A breaks 0 and 1, B breaks 2 (1 is gone, 7 never counted), D breaks 3
    assert seen == [[0, 1, 2, 3, 4, 5, 6], [2, 3, 4, 5, 6], [3, 4, 5, 6], [3, 4, 5, 6]]
    fooled = [0, 1, 2, 3]
    assert torch.equal(model(adv).argmax(1)[fooled], (y[fooled] + 1) % 3)
    assert (adv[fooled, 0, 0, 1] == 0.5).all() and (adv[4:, 0, 0, 1] == 0).all()  # the rest keep their clean image
    assert torch.equal(adv[4:], x[4:])

    # The study's rows: the accuracy after each stage, over batches, and the last stage's is the robust accuracy.
    monkeypatch.setattr(attacks, "AUTOATTACK_STAGES", ("A", "B", "C", "D"))
    monkeypatch.setattr(attacks, "autoattack_stages", lambda model, eps, num_classes, seed=0: stages)
    (zero, row) = accuracy_under_attack(model, x, y, "autoattack", [0.0, 0.1], batch_size=3)
    assert row["clean"] == zero["acc"] == 7 / 8 and row["n"] == 8
    assert [row[attacks.stage_key(s)] for s in "ABCD"] == [5 / 8, 4 / 8, 4 / 8, 3 / 8] and row["acc"] == 3 / 8
    assert [zero[attacks.stage_key(s)] for s in "ABCD"] == [7 / 8] * 4  # eps 0 attacks nothing
