"""Deep Q-learning (Mnih et al., 2015), Lab 4 exercise 3.2: a replay buffer and a slowly updated target net.

Collection is epsilon-greedy with epsilon decaying linearly from `rl.eps_start` to `rl.eps_end`
over the first `rl.eps_fraction` of `rl.total_steps`. Every `rl.train_freq` env steps (over all
envs) after `rl.learning_starts`, `rl.gradient_steps` updates each draw `train.batch_size`
transitions from the buffer and minimise the Huber loss between Q(s, a) and the target

    y = r + gamma * (1 - terminated) * max_a' Q_target(s', a')

(a truncated episode is not terminal: it bootstraps). Every `rl.target_update` env steps the online
net is copied into the target net. These are stable-baselines3's DQN semantics, so rl-zoo's
hyperparameters carry over. The buffer and the target net are part of the resumable checkpoint.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dla.rl.envs import to_tensor
from dla.rl.task import AgentTask


def td_target(rewards: torch.Tensor, next_q: torch.Tensor, terminated: torch.Tensor, gamma: float) -> torch.Tensor:
    """r + gamma * (1 - terminated) * max_a' Q_target(s', a'), with `next_q` the target net's Q-values of s'."""
    return rewards + gamma * (1.0 - terminated) * next_q.max(dim=-1).values


def epsilon(step: int, total: int, start: float, end: float, fraction: float) -> float:
    """Linear decay from `start` to `end` over the first `fraction` of `total` steps, then `end`."""
    span = fraction * total
    return end if span <= 0 or step >= span else start + (end - start) * step / span


class ReplayBuffer:
    """A ring buffer of transitions in preallocated tensors (frames stay uint8)."""

    def __init__(self, size: int, obs_shape: tuple[int, ...], dtype: torch.dtype):
        self.size, self.pos, self.full = size, 0, False
        self.obs = torch.zeros((size, *obs_shape), dtype=dtype)
        self.next_obs = torch.zeros((size, *obs_shape), dtype=dtype)
        self.actions = torch.zeros(size, dtype=torch.long)
        self.rewards = torch.zeros(size)
        self.terminated = torch.zeros(size)

    def __len__(self) -> int:
        return self.size if self.full else self.pos

    def add(self, obs: np.ndarray, next_obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray,
            terminated: np.ndarray) -> None:
        """Append a batch of transitions (numpy, one row each), overwriting the oldest when full."""
        n = len(actions)
        if n > self.size:  # only the last `size` would stay: write those alone (no row written twice)
            self.pos, self.full = (self.pos + n - self.size) % self.size, True
            obs, next_obs, actions, rewards, terminated = (x[-self.size:] for x in (obs, next_obs, actions, rewards, terminated))
            n = self.size
        rows = torch.from_numpy((self.pos + np.arange(n)) % self.size)
        self.obs[rows] = torch.from_numpy(obs).to(self.obs.dtype)
        self.next_obs[rows] = torch.from_numpy(next_obs).to(self.obs.dtype)
        self.actions[rows] = torch.from_numpy(actions).long()
        self.rewards[rows] = torch.from_numpy(np.asarray(rewards, dtype=np.float32))
        self.terminated[rows] = torch.from_numpy(np.asarray(terminated, dtype=np.float32))
        self.full = self.full or self.pos + n >= self.size
        self.pos = (self.pos + n) % self.size

    def sample(self, n: int, generator: torch.Generator):
        rows = torch.randint(len(self), (n,), generator=generator)
        return self.obs[rows], self.actions[rows], self.rewards[rows], self.next_obs[rows], self.terminated[rows]

    def state_dict(self) -> dict[str, Any]:
        n = len(self)
        return {"pos": self.pos, "full": self.full, "obs": self.obs[:n].clone(), "next_obs": self.next_obs[:n].clone(),
                "actions": self.actions[:n].clone(), "rewards": self.rewards[:n].clone(),
                "terminated": self.terminated[:n].clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        n = len(state["actions"])
        for key in ("obs", "next_obs", "actions", "rewards", "terminated"):
            getattr(self, key)[:n] = state[key]
        self.pos, self.full = state["pos"], state["full"]


class DQNTask(AgentTask):
    loss_terms = ("loss", "td_error", "q")

    def __init__(self, cfg: Any, info):
        super().__init__(cfg, info)
        self.batch_size = cfg.train.batch_size
        # a chunk: `train_freq` env steps (rounded up to whole vector steps), then a burst of updates
        self.chunk_steps = math.ceil(self.rl.train_freq / self.num_envs)
        self.chunk = self.chunk_steps * self.num_envs
        self.chunks = math.ceil(self.rl.total_steps / self.chunk)
        self.per_round = max(1, self.rl.eval_every // self.chunk)
        self.buffer = ReplayBuffer(self.rl.buffer_size, info.obs_shape, torch.uint8 if info.image else torch.float32)
        self.target: torch.nn.Module | None = None
        self.target_state: dict[str, Any] | None = None  # a resumed run's target weights, loaded on attach
        self.last_target_copy = 0  # env steps at the last copy
        self.eps = self.rl.eps_start

    def _trains(self, chunk: int) -> bool:
        """Whether chunk `chunk` (1-based) ends with a burst of updates: once past learning_starts, as SB3."""
        return chunk * self.chunk > self.rl.learning_starts

    def rounds(self, cfg) -> int:
        return math.ceil(self.chunks / self.per_round)

    def _chunks_of_round(self, r: int) -> range:
        return range(r * self.per_round + 1, min((r + 1) * self.per_round, self.chunks) + 1)

    def round_steps(self, cfg, done_steps: int) -> int:
        return sum(self.rl.gradient_steps for c in self._chunks_of_round(self.round_index) if self._trains(c))

    def total_steps(self, cfg) -> int:
        return sum(self.rl.gradient_steps for c in range(1, self.chunks + 1) if self._trains(c))

    def attach(self, model) -> None:
        super().attach(model)
        self.target = copy.deepcopy(model).requires_grad_(False)
        if self.target_state is not None:
            self.target.load_state_dict(self.target_state)

    def batches(self, cfg, generator, accelerator, steps):
        model, rl, n = self.model, self.rl, self.num_envs
        obs = self.start_round()
        online = [*model.parameters(), *model.buffers()]
        target = [*self.target.parameters(), *self.target.buffers()]
        for chunk in self._chunks_of_round(self.round_index - 1):
            # a chunk's exploration draws at once: which env steps explore, and their random actions
            explore = torch.rand(self.chunk_steps, n, generator=generator).numpy()
            random = torch.randint(self.info.n_actions, (self.chunk_steps, n), generator=generator).numpy()
            with torch.no_grad():
                for t in range(self.chunk_steps):
                    self.eps = epsilon(self.env_steps, rl.total_steps, rl.eps_start, rl.eps_end, rl.eps_fraction)
                    explores = explore[t] < self.eps
                    if explores.all():  # no need to ask the net
                        action = random[t]
                    else:
                        action = np.where(explores, random[t], model(to_tensor(obs)).argmax(-1).numpy())
                    next_obs, reward, terminated, truncated, valid = self.env_step(action)
                    if valid.all():
                        self.buffer.add(obs, next_obs, action, reward, terminated)
                    elif valid.any():
                        self.buffer.add(obs[valid], next_obs[valid], action[valid], reward[valid], terminated[valid])
                    obs = next_obs
                    if self.env_steps - self.last_target_copy >= rl.target_update:
                        for mine, theirs in zip(target, online):
                            mine.copy_(theirs)
                        self.last_target_copy = self.env_steps
            if self._trains(chunk):
                for _ in range(rl.gradient_steps):
                    yield self.buffer.sample(self.batch_size, generator)

    def step(self, model, batch, cfg, unwrapped, generator):
        obs, actions, rewards, next_obs, terminated = batch
        with torch.no_grad():
            target = td_target(rewards, self.target(next_obs), terminated, self.rl.gamma)
        q = model(obs).gather(1, actions.unsqueeze(1)).squeeze(1)
        loss = F.smooth_l1_loss(q, target)
        stats = {"loss": loss.detach(), "td_error": (q.detach() - target).abs().mean(), "q": q.detach().mean(),
                 "updates": torch.ones(())}
        return loss, stats

    def round_extras(self) -> dict[str, float]:
        return {"epsilon": round(self.eps, 4), "buffer": len(self.buffer)}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "buffer": self.buffer.state_dict(), "last_target_copy": self.last_target_copy,
                "target": self.target.state_dict() if self.target is not None else None, "eps": self.eps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        super().load_state_dict(state)
        self.buffer.load_state_dict(state["buffer"])
        self.last_target_copy, self.target_state, self.eps = state["last_target_copy"], state["target"], state["eps"]
