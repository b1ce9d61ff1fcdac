"""JARN (Lab 3, exercise 3.2): the discriminator sees the adapted input-gradient of the loss; a tiny run resumes."""

import pytest
import torch
import torch.nn.functional as F

from dla import experiment
from dla.build import model_for
from dla.config import load_experiment, load_run_config
from dla.rundir import RunDir
from dla.train.callbacks import Callback
from dla.train.jarn import Jarn, input_jacobian

TINY = ["budget=smoke", "data.download=false", "track.tracker=none", "train.precision=fp32", "train.jarn=true",
        "train.jarn_disc_every=2", "train.jarn_disc_width=4", "model.hidden=[32]", "model.dropout=0"]


def test_the_discriminator_judges_the_adapted_input_gradient_of_the_loss():
    cfg = load_experiment("lab1-mlp", TINY)
    torch.manual_seed(0)
    model = model_for(cfg)
    x, y = torch.rand(6, 1, 28, 28), torch.randint(0, 10, (6,))
    jarn = Jarn(1, cfg.train)
    seen = {}
    jarn.adaptor.register_forward_pre_hook(lambda m, args: seen.setdefault("adaptor", args[0].detach().clone()))
    jarn.disc.register_forward_pre_hook(lambda m, args: seen.setdefault("disc", []).append(args[0].detach().clone()))
    loss, logits, stats = jarn.loss(model, x, y, cfg.train, None)
    xr = x.clone().requires_grad_(True)
    ce = F.cross_entropy(model(xr), y)
    (grad,) = torch.autograd.grad(ce, xr)
    assert torch.allclose(seen["adaptor"], grad, atol=1e-7)  # J = d CE / d x
    adapted = torch.tanh(jarn.adaptor.conv(grad))
    real, fake, fooled = seen["disc"]  # step 0: the discriminator's update (real, fake), then the fooling term
    assert torch.allclose(real, x * 2 - 1) and torch.allclose(fake, adapted, atol=1e-6)
    assert torch.allclose(fooled, adapted, atol=1e-6)
    # the loss is CE + weight * the non-saturating GAN loss, and trains the model through the Jacobian
    fool = F.binary_cross_entropy_with_logits(jarn.disc(adapted), torch.ones(6))
    assert loss.item() == pytest.approx(ce.item() + cfg.train.jarn_weight * fool.item(), rel=1e-5)
    before = [p.grad.clone() for p in jarn.disc.parameters()]  # from the discriminator's own update
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert all(torch.equal(p.grad, g) for p, g in zip(jarn.disc.parameters(), before))  # not trained by this loss


def test_input_jacobian_is_the_gradient_and_keeps_the_graph():
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    x, y = torch.rand(4, 1, 3, 4), torch.tensor([0, 2, 1, 1])
    logits, ce, jac = input_jacobian(model, x, y)
    p = torch.softmax(model(x), 1)
    onehot = F.one_hot(y, 3).float()
    expected = ((p - onehot) @ model[1].weight / 4).view_as(x)  # d mean CE / d x for a linear model
    assert torch.allclose(jac, expected, atol=1e-6) and jac.requires_grad


class StopAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, step, model):
        if step == self.step:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_a_jarn_run_resumes_to_the_same_result(data_root, tmp_path):
    overrides = [*TINY, "train.epochs=3"]
    full = experiment.train(load_experiment("lab1-mlp", overrides), data_root, run_path=tmp_path / "full")
    assert "train_jarn_fool" in full.read_metrics()[0]
    with pytest.raises(KeyboardInterrupt):
        experiment.train(load_experiment("lab1-mlp", overrides), data_root, callbacks=[StopAt(12)],
                         run_path=tmp_path / "cut")
    cut = RunDir(tmp_path / "cut")
    resumed = experiment.train(load_run_config(cut), data_root, resume=cut)
    a, b = full.read_metrics(), resumed.read_metrics()
    assert [r["val_loss"] for r in a] == pytest.approx([r["val_loss"] for r in b], abs=1e-6)
