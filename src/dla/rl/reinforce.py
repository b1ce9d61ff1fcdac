"""REINFORCE (Williams, 1992), Lab 4 exercises 1, 2 and 3.1: Monte-Carlo policy gradient.

One update per batch of `data.num_envs` episodes (1 by default, as the course's loop): play each
env's episode to its end with the sampled policy, compute the discounted return G_t of every step,
and ascend  sum_t log pi(a_t | s_t) * w_t  with

    w_t = G_t                                  (plain, rl.standardize=false)
    w_t = (G_t - mean G) / std G               (rl.standardize=true: over the batch's steps)
    w_t = that - v(s_t)                        (rl.baseline=value: v, the policy's architecture, regresses
                                                the same targets; its gradient does not reach the policy)

The loss is the mean over the batch's steps (the course's normalisation), minus rl.entropy_coef times
the policy's mean entropy, plus rl.value_coef times the value net's mean squared error.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dla.rl.envs import to_tensor
from dla.rl.task import AgentTask

EPS = 1e-8


def discounted_returns(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = r_t + gamma * G_{t+1} along the first dimension (time) of `rewards` (T or T x N episodes that
    all end at T)."""
    out = torch.empty_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in range(len(rewards) - 1, -1, -1):
        running = rewards[t] + gamma * running
        out[t] = running
    return out


def standardize(x: torch.Tensor) -> torch.Tensor:
    """(x - mean) / (std + 1e-8), the population std, over all of `x`."""
    return (x - x.mean()) / (x.std(unbiased=False) + EPS)


def policy_weights(returns: torch.Tensor, standardized: bool, values: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(the weights of log pi in the policy gradient, the value net's targets): the returns, standardised
    or not, and minus the (detached) baseline v(s) when there is one."""
    targets = standardize(returns) if standardized else returns
    weights = targets - values.detach() if values is not None else targets
    return weights, targets


def reinforce_loss(logits: torch.Tensor, actions: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(-mean_t log pi(a_t|s_t) w_t, mean entropy) for the steps' action logits."""
    logp_all = F.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1).mean()
    return -(logp * weights).mean(), entropy


class ReinforceTask(AgentTask):
    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        self.loss_terms = ("loss", "policy_loss", *(("value_loss",) if self.rl.baseline == "value" else ()), "entropy")

    def _updates(self, episodes: int) -> int:
        return math.ceil(episodes / self.num_envs)

    def rounds(self, cfg) -> int:
        return math.ceil(self.rl.episodes / self.rl.eval_every)

    def round_steps(self, cfg, done_steps: int) -> int:
        done_episodes = done_steps * self.num_envs
        return self._updates(min(self.rl.eval_every, self.rl.episodes - done_episodes))

    def total_steps(self, cfg) -> int:
        return self._updates(self.rl.episodes)

    def batches(self, cfg, generator, accelerator, steps):
        model = self.model
        for update in range(steps):
            obs = self.envs.reset()[0] if update else self.start_round()  # the round's first reset is seeded
            observations, actions, rewards, alive = [], [], [], []
            running = np.ones(self.num_envs, dtype=bool)  # still in its first episode of this batch
            with torch.no_grad():
                while running.any():
                    x = to_tensor(obs).clone()
                    probs = F.softmax(model(x), dim=-1)
                    action = torch.multinomial(probs, 1, generator=generator).squeeze(1)
                    obs, reward, terminated, truncated, _ = self.envs.step(action.numpy())
                    observations.append(x)
                    actions.append(action)
                    rewards.append(torch.as_tensor(np.where(running, reward, 0.0), dtype=torch.float32))
                    alive.append(torch.from_numpy(running.copy()))
                    running &= ~(terminated | truncated)
            mask = torch.stack(alive)  # T x N: the steps of each env's episode
            returns = discounted_returns(torch.stack(rewards), self.rl.gamma)  # zeros after an episode's end
            lengths = mask.sum(0)
            self.episodes += self.num_envs
            self.env_steps += int(lengths.sum())
            self.round_returns += torch.stack(rewards).sum(0).tolist()
            self.round_lengths += lengths.tolist()
            yield torch.stack(observations)[mask], torch.stack(actions)[mask], returns[mask]

    def step(self, model, batch, cfg, unwrapped, generator):
        obs, actions, returns = batch
        values = unwrapped.value(obs) if self.rl.baseline == "value" else None
        weights, targets = policy_weights(returns, self.rl.standardize, values)
        policy_loss, entropy = reinforce_loss(model(obs), actions, weights)
        value_loss = F.mse_loss(values, targets) if values is not None else torch.zeros(())
        loss = policy_loss + self.rl.value_coef * value_loss - self.rl.entropy_coef * entropy
        stats = {"loss": loss.detach(), "policy_loss": policy_loss.detach(), "value_loss": value_loss.detach(),
                 "entropy": entropy.detach(), "updates": torch.ones(())}
        return loss, stats

    def summary(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        return {**super().summary(history), "standardize": self.rl.standardize, "baseline": self.rl.baseline}
