"""What every Lab 4 algorithm shares: the `Task` the one training loop (`dla.train.loop.fit`) drives.

A round of the loop is a number of optimiser updates made from fresh experience, and its
validation is `rl.eval_episodes` greedy episodes on fixed seeds (the same for every run, so rounds
and runs compare). The record of a round holds the episode and env-step counters, the mean return
of the training episodes that ended in it, the loss terms, and `val_return`, `val_length` and
`val_solved` (1 when a mean over at least 100 episodes reached the env's threshold). The run's
monitor is `val_return` (max), so `best.safetensors` is the best evaluated policy.

Resume is exact because every round starts from a fresh reset of the envs, seeded from the run's
seed and the round's index (`envs.round_seed`): a round's episodes are a function of the weights,
the saved RNG and that seed. An episode still running when a round ends is cut there and bootstrapped
as truncated. What an algorithm keeps between rounds besides the weights (DQN's replay buffer and
target net) is its `state_dict`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dla.train.tasks import Task
from dla.rl.envs import VAL_SEED, EnvInfo, greedy, make_envs, round_seed, run_episodes

SOLVE_EPISODES = 100  # gymnasium's "solved": a mean over 100 episodes at or above reward_threshold


class AgentTask(Task):
    """The shared half of an algorithm's task; an algorithm adds `rounds`, `round_steps`, `total_steps`,
    `batches` (collect experience, yield minibatches) and `step` (the loss of one minibatch)."""

    unit = "round"
    metrics = ("return", "return_std", "length", "solved")
    x_axis = "train_env_steps"
    loss_terms: tuple[str, ...] = ("loss",)  # the step stats that train_metrics averages per update

    def __init__(self, cfg: Any, info: EnvInfo):
        self.rl, self.env_cfg, self.seed, self.info = cfg.rl, cfg.data, cfg.seed, info
        self.num_envs = cfg.data.num_envs
        self.model: torch.nn.Module | None = None
        self.episodes = 0  # training episodes finished
        self.env_steps = 0  # training env steps taken (over all envs)
        self.round_index = 0  # training rounds started
        self.round_returns: list[float] = []  # returns of the training episodes that ended in this round
        self.round_lengths: list[int] = []
        self.envs = None
        # the state of the envs' running episodes (made at each round's start)
        self.obs: np.ndarray | None = None

    # ---------------------------------------------------------------------------------- the loop's API
    def attach(self, model: torch.nn.Module) -> None:
        self.model = model

    def test(self, model, accelerator, cfg) -> dict[str, float]:
        return self.evaluate(model, "test", accelerator, cfg)

    def evaluate(self, model, split, accelerator, cfg) -> dict[str, float]:
        model.eval()
        policy = greedy(model)
        if split == "test":
            returns, lengths = run_episodes(policy, self.env_cfg, self.rl.test_episodes, self.rl.test_seed)
            out = {"return": float(returns.mean()), "return_std": float(returns.std()), "length": float(lengths.mean())}
            if self.info.threshold is not None:
                out["solved_share"] = float((returns >= self.info.threshold).mean())
                out["solved"] = float(len(returns) >= SOLVE_EPISODES and returns.mean() >= self.info.threshold)
            return out
        returns, lengths = run_episodes(policy, self.env_cfg, self.rl.eval_episodes, VAL_SEED)
        out = {"return": float(returns.mean()), "return_std": float(returns.std()), "length": float(lengths.mean())}
        solved = 0.0
        if self.info.threshold is not None and returns.mean() >= self.info.threshold:
            if len(returns) < SOLVE_EPISODES:  # a good mean over a few episodes is checked over 100
                returns, _ = run_episodes(policy, self.env_cfg, SOLVE_EPISODES, VAL_SEED)
            solved = float(returns.mean() >= self.info.threshold)
        out["solved"] = solved
        return out

    def train_metrics(self, sums, model, accelerator, cfg) -> dict[str, float]:
        n = float(sums["updates"]) if "updates" in sums else 0.0
        out: dict[str, Any] = {"episodes": self.episodes, "env_steps": self.env_steps}
        if self.round_returns:
            out["return"] = float(np.mean(self.round_returns))
            out["length"] = float(np.mean(self.round_lengths))
        for key in self.loss_terms:
            if n and key in sums:
                out[key] = float(sums[key] / n)
        out.update(self.round_extras())
        self.round_returns, self.round_lengths = [], []
        return out

    def round_extras(self) -> dict[str, float]:
        """What an algorithm adds to a round's train metrics (e.g. DQN's epsilon)."""
        return {}

    def stop_reason(self, record: dict[str, Any]) -> str | None:
        if self.rl.stop_when_solved and record.get("val_solved") == 1.0:
            return f"solved (val return {record['val_return']:.1f} >= {self.info.threshold:g} over 100 episodes)"
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"episodes": self.episodes, "env_steps": self.env_steps, "round_index": self.round_index}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.episodes, self.env_steps, self.round_index = state["episodes"], state["env_steps"], state["round_index"]

    def summary(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        """Episodes, env steps and time to "solved" (the first round whose 100-episode mean reached the
        threshold): `elapsed_s` counts training and evaluation, `train_s` the training alone."""
        out: dict[str, Any] = {"env": self.info.id, "algo": self.rl.algo, "threshold": self.info.threshold,
                               "episodes": self.episodes, "env_steps": self.env_steps}
        train_s = 0.0
        for record in history:
            train_s += record.get("steps_time_s", 0.0)
            if record.get("val_solved") == 1.0:
                out.update({"solved_round": record["epoch"], "episodes_to_solve": record["train_episodes"],
                            "env_steps_to_solve": record["train_env_steps"], "time_to_solve_s": record["elapsed_s"],
                            "train_time_to_solve_s": round(train_s, 3)})
                break
        return out

    # --------------------------------------------------------------------------- for the algorithms
    def start_round(self) -> np.ndarray:
        """A fresh, seeded reset of the training envs at a round's start (see the module's docstring)."""
        if self.envs is None:
            self.envs = make_envs(self.env_cfg, self.num_envs)
        self.obs, _ = self.envs.reset(seed=round_seed(self.seed, self.round_index))
        self.round_index += 1
        self.ep_return = np.zeros(self.num_envs)
        self.ep_length = np.zeros(self.num_envs, dtype=np.int64)
        self.resetting = np.zeros(self.num_envs, dtype=bool)  # this step only resets (NEXT_STEP autoreset)
        return self.obs

    def env_step(self, actions: np.ndarray):
        """Step the training envs; returns (obs, reward, terminated, truncated, valid), where `valid` is False for
        an env whose step only reset it (its transition is not experience). Counts steps and episodes."""
        valid = ~self.resetting
        obs, reward, terminated, truncated, _ = self.envs.step(actions)
        self.obs = obs
        self.env_steps += int(valid.sum())
        self.ep_return += np.where(valid, reward, 0.0)
        self.ep_length += valid
        done = (terminated | truncated) & valid
        for i in np.flatnonzero(done):
            self.episodes += 1
            self.round_returns.append(float(self.ep_return[i]))
            self.round_lengths.append(int(self.ep_length[i]))
            self.ep_return[i], self.ep_length[i] = 0.0, 0
        self.resetting = done
        return obs, reward, terminated & valid, truncated & valid, valid

    def close(self) -> None:
        if self.envs is not None:
            self.envs.close()
            self.envs = None
