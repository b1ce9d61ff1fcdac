"""One source per list: detectors, attacks and CAM methods come from their registries (name -> function),
the command line's choices and --help read them lazily, and every registered name runs."""

from __future__ import annotations

import subprocess
import sys

import torch

from dla import attacks
from dla.analysis import cam, ood
from dla.cli import ATTACKS, CAM_METHODS, DETECTORS, build_parser
from dla.models.mlp import MLPConfig
from dla.models.registry import build_model


def toy_classifier():
    torch.manual_seed(0)
    return build_model(MLPConfig(hidden=[16], dropout=0.0), (1, 4, 4), 4, (0.5,), (0.25,)).eval()


def test_the_command_line_reads_the_registries():
    assert tuple(DETECTORS) == tuple(ood.DETECTORS)
    assert tuple(ATTACKS) == tuple(attacks.ATTACKS)
    assert tuple(CAM_METHODS) == tuple(cam.METHODS)
    text = build_parser()._subparsers._group_actions[0].choices["attack"].format_help()
    assert all(name in text for name in attacks.ATTACKS)


def test_dla_help_imports_no_registry():
    code = "import sys; from dla.cli import main\ntry: main(['--help'])\nexcept SystemExit: pass\n" \
           "print(sorted(m for m in ('torch', 'sklearn', 'dla.attacks', 'dla.analysis.ood') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_every_registered_detector_scores_every_image():
    model = toy_classifier()
    x_train, y_train = torch.rand(40, 1, 4, 4), torch.arange(4).repeat(10)
    fitted = {name: ood.fit_detector(name, model, x_train, y_train, **({"k": 3} if name == "knn" else {}))
              for name in ood.FITTED_DETECTORS}
    x = torch.rand(6, 1, 4, 4)
    for name, scorer in ood.DETECTORS.items():
        scores = torch.as_tensor(scorer(model, x, fitted, 10.0, 0.001))
        assert scores.shape == (6,) and torch.isfinite(scores).all(), name


def test_every_registered_attack_stays_in_its_budget(monkeypatch):
    monkeypatch.setattr(attacks, "AUTOATTACK_ITERATIONS", 3)
    monkeypatch.setattr(attacks, "SQUARE_QUERIES", 20)
    model = toy_classifier()
    x, y = torch.rand(8, 1, 4, 4), torch.arange(4).repeat(2)
    for name in attacks.ATTACKS:
        adv = attacks.attack(name, model, x, y, 0.1, steps=3, c=1.0)
        assert adv.shape == x.shape and adv.min() >= 0 and adv.max() <= 1, name
        if name != "cw":  # an L2 attack: eps is no budget
            assert (adv - x).abs().max() <= 0.1 + 1e-6, name


def test_every_registered_cam_method_maps_every_image():
    from dla.config import load_experiment
    from dla.build import model_for

    cfg = load_experiment("lab1-cnn", ["data=mnist", "budget=smoke", "model.head=gap", "model.width=4"])
    torch.manual_seed(0)
    model = model_for(cfg).eval()
    x = torch.rand(2, 1, 28, 28)
    for name in cam.METHODS:
        maps = cam.heatmaps(model, x, torch.tensor([1, 2]), name)
        assert maps.shape == (2, 28, 28) and maps.min() >= 0 and maps.max() <= 1 + 1e-6, name
