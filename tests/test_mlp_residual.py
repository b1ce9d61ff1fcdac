"""Lab 1, exercise 1.2 (newer edition): the residual MLP and its depth sweep."""

import pytest
import torch

from dla.build import model_for
from dla.cli import main
from dla.config import load_experiment
from dla.errors import ConfigError, DlaError
from dla.models.fcn import to_fcn


def mlp(*overrides):
    torch.manual_seed(0)
    return model_for(load_experiment("lab1-mlp-deep", list(overrides)))


def test_the_residual_mlp_adds_each_layer_to_its_input_exactly():
    model = mlp("model.residual=true", "model.depth=3").eval()
    plain = mlp("model.residual=false", "model.depth=3").eval()
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in plain.parameters())
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    x = torch.rand(5, 1, 28, 28)
    net = model.net
    first = lambda h: torch.relu(net[2](net[1](h)))  # noqa: E731

    def layer(block, h):
        linear, bn = block.layer[0], block.layer[1]
        return torch.relu(bn(linear(h)))

    with torch.no_grad():
        h = first(model.normalize(x).flatten(1))
        h = h + layer(net[4], h)
        h = h + layer(net[5], h)
        expected = net[6](h)
        got = model(x)
    assert torch.allclose(got, expected, atol=1e-6)
    # without the skips the same layers give another function
    with torch.no_grad():
        h = first(model.normalize(x).flatten(1))
        h = layer(net[5], layer(net[4], h))
        assert not torch.allclose(got, net[6](h), atol=1e-3)


def test_depth_sets_the_hidden_layers_and_the_plain_mlp_keeps_its_layout():
    plain = mlp("model.depth=5")
    assert sum(isinstance(m, torch.nn.Linear) for m in plain.modules()) == 6  # 5 hidden + the head
    assert "net.1.weight" in plain.state_dict() and "net.13.weight" in plain.state_dict()
    default = model_for(load_experiment("lab1-mlp", []))  # no depth: hidden as given, as before
    assert [m.out_features for m in default.modules() if isinstance(m, torch.nn.Linear)] == [1024, 1024, 10]


def test_bad_residual_settings_are_refused():
    with pytest.raises(ConfigError, match="model.residual"):
        load_experiment("lab1-mlp", ["model.residual=true", "model.hidden=[64,32]"])
    with pytest.raises(ConfigError, match="model.depth"):
        load_experiment("lab1-mlp-deep", ["model.depth=0"])
    load_experiment("lab1-mlp", ["model.residual=true", "model.hidden=[64,32]", "model.depth=3"])  # one width
    with pytest.raises(DlaError, match="fully convolutional"):
        to_fcn(mlp("model.residual=true").eval(), (1, 28, 28))


@pytest.mark.slow
def test_the_depth_sweep_runs_plain_and_residual_with_gradient_stats(data_root, tmp_path, capsys):
    assert main(["--data-root", str(data_root), "sweep", "lab1-mlp-depth", "budget=smoke", "data.download=false",
                 "track.tracker=none", f"runs_dir={tmp_path}"]) == 0
    sweep = next((tmp_path / "lab1-mlp-depth").iterdir())
    names = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert names == sorted(f"MLP-{d}{s}" for d in (2, 4, 8, 16) for s in ("", "-skip"))
    assert all((sweep / n / "gradients.jsonl").stat().st_size > 0 for n in names)
    assert "| MLP-16-skip |" in (sweep / "table.md").read_text()
    assert main(["gradients", str(sweep), "--out", str(tmp_path / "grads")]) == 0
    assert (tmp_path / "grads" / "layers.png").stat().st_size > 1000
