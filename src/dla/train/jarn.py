"""Jacobian Adversarially Regularized Networks (Chan et al., ICLR 2020), the adversarial lab's exercise 3.2.

A classifier's input Jacobian J = d loss / d x (the gradient of its cross-entropy with respect to the
image) is made to look like an image: an adaptor (a 1x1 conv and tanh, as the paper's) maps J into
[-1, 1], and a discriminator learns to tell adapted Jacobians from real images (scaled to [-1, 1]).
The classifier is trained on cross-entropy + `jarn_weight` * the non-saturating GAN loss of fooling
the discriminator, through the Jacobian (double backpropagation); no adversarial example is made.

Settings (`train.jarn_*`, named after the paper's code): the weight (its beta, 1), the discriminator's
learning rate, base width and depth (its disc_base_channels 32, disc_layers), how many classifier
steps pass between two discriminator updates (its disc_update_steps, 20), the steps before the
adversarial term is switched on (its steps_before_adv_opt) and the uniform noise added to the images
whose Jacobians are taken (its img_random_pert).

The adaptor is trained with the classifier's loss but by its own optimiser: the loop's backward
leaves its gradients, and they are applied at the start of the next step. The discriminator, the
adaptor and both optimisers are part of the task's resumable state.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dla.device import autocast, prepare_input


class Adaptor(nn.Module):
    """tanh(1x1 conv(J)): the Jacobian rescaled into an image's range."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1)

    def forward(self, j: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(j))


class Discriminator(nn.Module):
    """`layers` stride-2 3x3 convs (width, 2 width, ...) with LeakyReLU, global average, one logit: real image?"""

    def __init__(self, channels: int, width: int = 32, layers: int = 3):
        super().__init__()
        blocks, cin = [], channels
        for i in range(layers):
            cout = width * 2**i
            blocks += [nn.Conv2d(cin, cout, 3, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
            cin = cout
        self.body = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).flatten()


def input_jacobian(model: nn.Module, x: torch.Tensor, y: torch.Tensor, precision: str = "fp32",
                   channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits, mean cross-entropy, J = d cross-entropy / d x), J in the graph (create_graph) so that a loss on it
    trains the model (double backpropagation)."""
    x = x.detach().requires_grad_(True)
    with autocast(x.device, precision):
        logits = model(prepare_input(x, channels_last)).float()
    ce = F.cross_entropy(logits, y)
    (jac,) = torch.autograd.grad(ce, x, create_graph=True)
    return logits, ce, jac


class Jarn:
    """The adaptor, the discriminator and their optimisers, and the two losses of one step."""

    def __init__(self, channels: int, cfg: Any, seed: int = 0):
        gen = torch.random.fork_rng()  # its initialisation leaves the classifier's random stream as it was
        with gen:
            torch.manual_seed(seed + 7919)
            self.adaptor = Adaptor(channels)
            self.disc = Discriminator(channels, cfg.jarn_disc_width, cfg.jarn_disc_layers)
        self.weight, self.every, self.warmup, self.noise = cfg.jarn_weight, cfg.jarn_disc_every, cfg.jarn_warmup, cfg.jarn_noise
        self.adaptor_opt = torch.optim.Adam(self.adaptor.parameters(), lr=cfg.jarn_disc_lr, betas=(0.5, 0.999))
        self.disc_opt = torch.optim.Adam(self.disc.parameters(), lr=cfg.jarn_disc_lr, betas=(0.5, 0.999))
        self.steps = 0

    def to(self, device) -> "Jarn":
        self.adaptor.to(device)
        self.disc.to(device)
        return self

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: Any,
             generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """The classifier's loss on a batch (cross-entropy + weight * fool-the-discriminator), its logits and
        statistics; every `every` steps the discriminator is first updated on this batch."""
        if any(p.grad is not None for p in self.adaptor.parameters()):  # the previous step's adaptor gradients
            self.adaptor_opt.step()
            self.adaptor_opt.zero_grad(set_to_none=True)
        seen = x
        if self.noise:
            u = torch.rand(x.shape, generator=generator, device=x.device) if generator is not None else torch.rand_like(x)
            seen = (x + (2 * u - 1) * self.noise).clamp(0, 1)
        logits, ce, jac = input_jacobian(model, seen, y, cfg.precision, cfg.channels_last)
        fake = self.adaptor(jac)
        stats: dict[str, torch.Tensor] = {}
        if self.steps % self.every == 0:  # first, so that the fooling loss's graph holds the weights it is taken with
            ones, zeros = torch.ones(len(x), device=x.device), torch.zeros(len(x), device=x.device)
            d_loss = (F.binary_cross_entropy_with_logits(self.disc(x * 2 - 1), ones)
                      + F.binary_cross_entropy_with_logits(self.disc(fake.detach()), zeros))
            self.disc_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            self.disc_opt.step()
            stats["jarn_disc"] = d_loss.detach()
        for p in self.disc.parameters():
            p.requires_grad_(False)
        fool = F.binary_cross_entropy_with_logits(self.disc(fake), torch.ones(len(x), device=x.device))
        for p in self.disc.parameters():
            p.requires_grad_(True)
        active = self.steps >= self.warmup
        loss = ce + (self.weight * fool if active else 0.0)
        stats["jarn_fool"] = fool.detach()
        self.steps += 1
        return loss, logits, stats

    def state_dict(self) -> dict[str, Any]:
        return {"adaptor": self.adaptor.state_dict(), "disc": self.disc.state_dict(), "steps": self.steps,
                "adaptor_opt": self.adaptor_opt.state_dict(), "disc_opt": self.disc_opt.state_dict(),
                "adaptor_grads": [None if p.grad is None else p.grad.clone() for p in self.adaptor.parameters()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.adaptor.load_state_dict(state["adaptor"])
        self.disc.load_state_dict(state["disc"])
        self.adaptor_opt.load_state_dict(state["adaptor_opt"])
        self.disc_opt.load_state_dict(state["disc_opt"])
        self.steps = state["steps"]
        for p, g in zip(self.adaptor.parameters(), state["adaptor_grads"]):
            p.grad = None if g is None else g.to(p.device)
