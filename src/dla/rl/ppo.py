"""PPO (Schulman et al., 2017) with a clipped surrogate and GAE: the strong baseline of Lab 4.

Each rollout runs `rl.n_steps` steps in each of `data.num_envs` envs with the sampled policy (one
batched policy and value call per step, into preallocated buffers). GAE(lambda) gives the
advantages; then `rl.update_epochs` passes over the rollout in shuffled minibatches of
`train.batch_size`, each one optimiser update of

    L = -mean min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A) + c_v * mean (v(s) - R)^2 - c_e * entropy

with ratio = pi(a|s) / pi_old(a|s) and R = A + v_old(s), advantages standardised per minibatch
(`rl.norm_adv`), as stable-baselines3's PPO (no value clipping). A step that only reset an env
(gymnasium's next-step autoreset) is not experience: it is dropped before the minibatches. A truncated episode (time limit, or
the end of a rollout) bootstraps from v of its final observation; a terminated one from 0.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dla.rl.task import AgentTask


def gae(rewards: torch.Tensor, values: torch.Tensor, terminated: torch.Tensor, done: torch.Tensor,
        gamma: float, lam: float) -> torch.Tensor:
    """Generalised advantage estimates of a T x N rollout.

    `values` is (T + 1) x N: v of every step's observation, then of the observation after the last step.
    A step with `done` (terminated or truncated) ends its episode: the next row is its final observation
    (bootstrap when truncated, 0 when terminated) and the advantage does not flow back across it."""
    steps = len(rewards)
    adv = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in range(steps - 1, -1, -1):
        next_value = values[t + 1] * (1.0 - terminated[t])
        delta = rewards[t] + gamma * next_value - values[t]
        running = delta + gamma * lam * (1.0 - done[t]) * running
        adv[t] = running
    return adv


def masked_mean(x: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    return x.mean() if w is None else (x * w).sum() / w.sum().clamp_min(1.0)


def ppo_loss(logits, actions, old_logp, advantages, values, returns, weight, clip: float, norm_adv: bool,
             entropy_grad: bool = True):
    """(policy loss, value loss, entropy, clip fraction, approx KL) of one minibatch; `weight` is 0 for rows
    that are not experience (a reset step), or None when every row is (the training loop drops the others
    before it makes minibatches: fewer operations per update than masking them)."""
    logp_all = F.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    if norm_adv:
        mean = masked_mean(advantages, weight)
        std = masked_mean((advantages - mean) ** 2, weight).sqrt()
        advantages = (advantages - mean) / (std + 1e-8)
    log_ratio = logp - old_logp
    ratio = log_ratio.exp()
    surrogate = torch.min(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages)
    policy_loss = -masked_mean(surrogate, weight)
    value_loss = masked_mean((values - returns) ** 2, weight)
    with contextlib.nullcontext() if entropy_grad else torch.no_grad():  # logged, not trained, at coef 0
        entropy = masked_mean(-(logp_all.exp() * logp_all).sum(-1), weight)
    with torch.no_grad():
        clip_frac = masked_mean(((ratio - 1).abs() > clip).float(), weight)
        approx_kl = masked_mean((ratio - 1) - log_ratio, weight)
    return policy_loss, value_loss, entropy, clip_frac, approx_kl


def explained_variance(values: torch.Tensor, returns: torch.Tensor) -> float:
    """1 - Var(R - v) / Var(R): 1 for a perfect critic, 0 for a constant one."""
    var = returns.var(unbiased=False)
    return float("nan") if var == 0 else float(1 - (returns - values).var(unbiased=False) / var)


class PPOTask(AgentTask):
    loss_terms = ("loss", "policy_loss", "value_loss", "entropy", "clip_frac", "approx_kl")

    def __init__(self, cfg: Any, info):
        super().__init__(cfg, info)
        self.batch_size = cfg.train.batch_size
        self.rollout = self.num_envs * self.rl.n_steps
        self.minibatches = math.ceil(self.rollout / self.batch_size)
        self.per_round = max(1, self.rl.eval_every // self.rollout)  # rollouts per round
        self.rollouts = math.ceil(self.rl.total_steps / self.rollout)
        self.explained: list[float] = []

    def rounds(self, cfg) -> int:
        return math.ceil(self.rollouts / self.per_round)

    def round_steps(self, cfg, done_steps: int) -> int:
        done = done_steps // (self.rl.update_epochs * self.minibatches)
        return min(self.per_round, self.rollouts - done) * self.rl.update_epochs * self.minibatches

    def total_steps(self, cfg) -> int:
        return self.rollouts * self.rl.update_epochs * self.minibatches

    def _buffers(self):
        """The rollout's storage, allocated once: observations and per-step env outputs in numpy (the env
        writes there, and a step's observation reaches the policy as a zero-copy tensor view), the policy's
        outputs in torch."""
        T, N, shape = self.rl.n_steps, self.num_envs, self.info.obs_shape
        self.b_obs = np.zeros((T + 1, N, *shape), dtype=np.uint8 if self.info.image else np.float32)
        self.b_env = np.zeros((4, T, N), dtype=np.float32)  # reward, terminated, done, valid
        self.b_act = torch.zeros((T, N), dtype=torch.long)
        self.b_logp = torch.zeros(T, N)
        self.b_val = torch.zeros(T + 1, N)

    def batches(self, cfg, generator, accelerator, steps):
        if not hasattr(self, "b_obs"):
            self._buffers()
        model = self.model
        obs = self.start_round()
        b_obs, b_env = self.b_obs, self.b_env
        for _ in range(steps // (self.rl.update_epochs * self.minibatches)):
            with torch.no_grad():  # collect a rollout
                for t in range(self.rl.n_steps):
                    b_obs[t] = obs
                    x = torch.from_numpy(b_obs[t])
                    logits = model(x)
                    self.b_val[t] = model.value(x)
                    logp_all = F.log_softmax(logits, dim=-1)
                    action = torch.multinomial(logp_all.exp(), 1, generator=generator)
                    self.b_logp[t] = logp_all.gather(1, action).squeeze(1)
                    self.b_act[t] = action.squeeze(1)
                    obs, b_env[0, t], b_env[1, t], truncated, b_env[3, t] = self.env_step(self.b_act[t].numpy())
                    b_env[2, t] = np.logical_or(b_env[1, t], truncated)  # done: the episode ended
                b_obs[-1] = obs
                obs_t = torch.from_numpy(b_obs)
                self.b_val[-1] = model.value(obs_t[-1])
                rew, term, done, weight = torch.from_numpy(b_env)
                adv = gae(rew, self.b_val, term, done, self.rl.gamma, self.rl.gae_lambda)  # reset rows: dropped below
                returns = adv + self.b_val[:-1]
                flat = lambda x: x.reshape(self.rollout, *x.shape[2:])  # noqa: E731
                valid = flat(weight) > 0  # the experience: not the steps that only reset an env
                data = tuple(flat(x)[valid] for x in (obs_t[:-1], self.b_act, self.b_logp, adv, returns))
                self.explained.append(explained_variance(flat(self.b_val[:-1])[valid], data[4]))
            rows = len(data[0])
            for _ in range(self.rl.update_epochs):
                # always `minibatches` updates per epoch (the schedule counts them in advance): when reset steps
                # were dropped, the minibatches are that much smaller than train.batch_size
                order = torch.randperm(rows, generator=generator)
                if rows < self.minibatches:  # (a tiny train.batch_size) no empty minibatch
                    order = order.repeat(math.ceil(self.minibatches / rows))[:self.minibatches]
                for part in order.tensor_split(self.minibatches):
                    yield tuple(x[part] for x in data)

    def step(self, model, batch, cfg, unwrapped, generator):
        obs, actions, old_logp, adv, returns = batch
        policy_loss, value_loss, entropy, clip_frac, approx_kl = ppo_loss(
            model(obs), actions, old_logp, adv, unwrapped.value(obs), returns, None, self.rl.clip, self.rl.norm_adv,
            entropy_grad=self.rl.entropy_coef > 0)
        loss = policy_loss + self.rl.value_coef * value_loss
        if self.rl.entropy_coef > 0:
            loss = loss - self.rl.entropy_coef * entropy
        stats = {"loss": loss.detach(), "policy_loss": policy_loss.detach(), "value_loss": value_loss.detach(),
                 "entropy": entropy.detach(), "clip_frac": clip_frac, "approx_kl": approx_kl, "updates": torch.ones(())}
        return loss, stats

    def round_extras(self) -> dict[str, float]:
        out = {"explained_variance": float(np.nanmean(self.explained))} if self.explained else {}
        self.explained = []
        return out
