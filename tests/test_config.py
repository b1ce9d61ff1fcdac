import pytest

from dla.config import ExperimentConfig, load_experiment, from_dict, to_dict
from dla.errors import ConfigError
from dla.models.mlp import MLPConfig


def test_defaults_and_overrides_are_typed():
    cfg = load_experiment("lab1-mlp", ["optim.lr=3e-3", "train.epochs=5", "model.hidden=[128,64]", "train.clip_grad_norm=1"])
    assert isinstance(cfg, ExperimentConfig) and isinstance(cfg.model, MLPConfig)
    assert cfg.optim.lr == pytest.approx(3e-3) and isinstance(cfg.optim.lr, float)
    assert cfg.train.epochs == 5 and cfg.model.hidden == [128, 64]
    assert cfg.train.clip_grad_norm == 1.0


def test_yaml_values_like_2e_3_are_numbers():
    # PyYAML reads "2e-3" as a string; the loader must still give a float.
    assert load_experiment("lab1-mlp").optim.lr == pytest.approx(2e-3)


def test_aliases_and_presets():
    cfg = load_experiment("lab1-mlp", ["data=fashion-mnist", "tracker=none", "budget=smoke", "train.epochs=4"])
    assert cfg.data.name == "fashion-mnist" and cfg.track.tracker == "none"
    assert cfg.data.train_subset == 2048  # from the preset
    assert cfg.train.epochs == 4  # explicit key wins over the preset, whatever the order
    assert cfg.presets == {"budget": "smoke"}


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lrr=1", "unknown key optim.lrr (did you mean optim.lr?)"),
        ("optim.name=adm", "optim.name: 'adm' is not valid; choose one of sgd, adamw, adam"),
        ("train.epochs=two", "train.epochs: expected an integer"),
        ("train.epochs=0", "train.epochs: must be > 0"),
        ("train.precision=fp8", "choose one of auto, fp32, bf16"),
        ("data=imagenet", "data.name: 'imagenet' is not valid"),
        ("model.hidden=[0]", "model.hidden: widths must be > 0"),
        ("model.name=vit", "model.name: 'vit' is not a model"),
        ("budget=huge", "unknown budget; valid: smoke"),
        ("train.deterministic=maybe", "expected true or false"),
        ("noequals", "not of the form key=value"),
    ],
)
def test_bad_values_are_rejected_with_one_line(override, message):
    with pytest.raises(ConfigError) as exc:
        load_experiment("lab1-mlp", [override])
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_unknown_experiment_lists_available():
    with pytest.raises(ConfigError, match="available: .*lab1-mlp"):
        load_experiment("lab9-nothing")


def test_resolved_config_round_trips():
    cfg = load_experiment("lab1-mlp", ["optim.lr=0.01", "model.hidden=[32]"])
    assert from_dict(to_dict(cfg)) == cfg


@pytest.mark.parametrize("native, precision, compiled", [(True, "bf16", True), (False, "fp32", False)])
def test_auto_precision_and_compile_follow_the_cpu(monkeypatch, native, precision, compiled):
    from dla import device

    monkeypatch.setattr(device, "cpu_has_bf16", lambda: native)
    monkeypatch.setattr(device.torch.cuda, "is_available", lambda: False)
    train = load_experiment("lab2-gpt-char", ["train.device=auto"]).train
    assert (train.precision, train.compile) == ("auto", "auto")
    device.resolve_execution(train)
    assert (train.precision, train.compile) == (precision, compiled)
    # explicit settings are kept as they are
    train = load_experiment("lab2-gpt-char", ["train.precision=bf16", "train.compile=false"]).train
    device.resolve_execution(train)
    assert (train.precision, train.compile) == ("bf16", False)


def test_explicit_bf16_on_a_cpu_that_emulates_it_gets_one_note(monkeypatch, capsys):
    from dla import device

    monkeypatch.setattr(device, "cpu_has_bf16", lambda: False)
    monkeypatch.setattr(device, "_warned_bf16", False)
    for _ in range(2):
        device.resolve_execution(load_experiment("lab2-gpt-char", ["train.precision=bf16", "train.device=cpu"]).train)
    assert capsys.readouterr().out.count("bf16 autocast is emulated here") == 1
