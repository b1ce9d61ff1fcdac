"""Gymnasium environments for Lab 4: checked ids, vector envs, seeded greedy evaluation.

Every env is a gymnasium vector env (`gymnasium.make_vec`): CartPole's own numpy-vectorised
implementation where the env has one, else a `SyncVectorEnv` (on 2 cores, processes cost more than
they give for envs this cheap). Vector envs reset an env that finished on the *next* step
(gymnasium's default `NEXT_STEP` autoreset): the step after a `terminated` or `truncated` one
ignores its action and returns the new episode's first observation with reward 0. The algorithms
mask that step out; in exchange the final observation of a truncated episode is at hand, to bootstrap.

Image observations (CarRacing) become `frame_stack` grey `frame_size` x `frame_size` uint8 frames.
Seeds: `reset(seed=s)` seeds env i with s + i; `episode_seeds` derives a round's seed from the run's.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from dla.errors import ConfigError

VAL_SEED = 1_000_000  # validation episode i is seeded VAL_SEED + i in every run (test: rl.test_seed + i)


@dataclass(frozen=True)
class EnvInfo:
    """What the agent and the kind need to know about an env."""

    id: str
    obs_shape: tuple[int, ...]
    n_actions: int | None  # None: a continuous action space
    threshold: float | None  # gymnasium's reward_threshold: "solved" is a 100-episode mean at or above it
    max_episode_steps: int | None
    image: bool

    @property
    def source(self) -> str:
        return self.id


def _gym():
    try:
        import gymnasium
    except ImportError:  # pragma: no cover
        raise ConfigError("Lab 4 needs gymnasium: pip install 'gymnasium[box2d]==1.4.0'") from None
    return gymnasium


def _kwargs(env_cfg: Any) -> dict[str, Any]:
    return {} if env_cfg.continuous is None else {"continuous": env_cfg.continuous}


def check_id(name: str) -> Any:
    """The registered spec of env `name`, or a one-line error naming the closest ids."""
    gym = _gym()
    if name not in gym.registry:
        near = difflib.get_close_matches(name, list(gym.registry), n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(near)}?" if near else "; e.g. CartPole-v1, LunarLander-v3"
        raise ConfigError(f"data.name: {name!r} is not a gymnasium environment{hint}")
    return gym.spec(name)


_INFO: dict[tuple, EnvInfo] = {}


def env_info(env_cfg: Any) -> EnvInfo:
    """Spaces, threshold and limits of the env `env_cfg` names (one env is made to read them, then closed)."""
    key = (env_cfg.name, env_cfg.continuous, env_cfg.frame_size, env_cfg.frame_stack)
    if key in _INFO:
        return _INFO[key]
    gym = _gym()
    spec = check_id(env_cfg.name)
    try:
        env = gym.make(env_cfg.name, **_kwargs(env_cfg))
    except TypeError as exc:  # an env without a `continuous` argument
        raise ConfigError(f"data.continuous: {env_cfg.name} does not take it ({exc})") from None
    except gym.error.DependencyNotInstalled as exc:
        raise ConfigError(f"data.name={env_cfg.name}: {str(exc).splitlines()[0]}") from None
    try:
        space = env.observation_space
        image = len(space.shape) == 3
        obs_shape = (env_cfg.frame_stack, env_cfg.frame_size, env_cfg.frame_size) if image else tuple(space.shape)
        actions = env.action_space
        n_actions = int(actions.n) if isinstance(actions, gym.spaces.Discrete) else None
        info = EnvInfo(env_cfg.name, obs_shape, n_actions, spec.reward_threshold, spec.max_episode_steps, image)
    finally:
        env.close()
    _INFO[key] = info
    return info


def make_envs(env_cfg: Any, n: int, render: bool = False) -> Any:
    """A vector env of `n` copies of `env_cfg`'s env (frames preprocessed for image observations)."""
    gym = _gym()
    info = env_info(env_cfg)
    kwargs = _kwargs(env_cfg)
    if render:
        kwargs["render_mode"] = "rgb_array"
    if info.image:
        from gymnasium.wrappers import FrameStackObservation, GrayscaleObservation, ResizeObservation

        size = (env_cfg.frame_size, env_cfg.frame_size)
        wrappers = [GrayscaleObservation, lambda e: ResizeObservation(e, size),
                    lambda e: FrameStackObservation(e, env_cfg.frame_stack)]
        return gym.make_vec(env_cfg.name, num_envs=n, vectorization_mode="sync", wrappers=wrappers, **kwargs)
    spec = gym.spec(env_cfg.name)
    mode = "vector_entry_point" if spec.vector_entry_point and not kwargs else "sync"  # (rendering: sync)
    return gym.make_vec(env_cfg.name, num_envs=n, vectorization_mode=mode, **kwargs)


def round_seed(seed: int, round_index: int) -> int:
    """The seed of a training round's first reset: a function of the run's seed and the round alone,
    so that a resumed run meets the same episodes as an uninterrupted one."""
    return int(np.random.SeedSequence([seed, round_index]).generate_state(1)[0]) % (2**31 - 2**10)


def to_tensor(obs: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(obs))


Policy = Callable[[torch.Tensor], torch.Tensor]  # a batch of observations -> a batch of actions


@torch.inference_mode()
def run_episodes(policy: Policy, env_cfg: Any, episodes: int, seed: int, chunk: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Returns and lengths of `episodes` episodes of `policy`, episode i seeded with `seed + i`.

    Up to `chunk` episodes run side by side in one vector env (one batched policy call per step);
    an env that finished waits, unstepped in effect, for the others."""
    returns, lengths = np.zeros(episodes), np.zeros(episodes, dtype=np.int64)
    for start in range(0, episodes, chunk):
        n = min(chunk, episodes - start)
        envs = make_envs(env_cfg, n)
        try:
            obs, _ = envs.reset(seed=seed + start)
            active = np.ones(n, dtype=bool)
            total, steps = np.zeros(n), np.zeros(n, dtype=np.int64)
            while active.any():
                actions = policy(to_tensor(obs)).numpy()
                obs, reward, terminated, truncated, _ = envs.step(actions)
                total += np.where(active, reward, 0.0)
                steps += active
                active &= ~(terminated | truncated)
        finally:
            envs.close()
        returns[start:start + n], lengths[start:start + n] = total, steps
    return returns, lengths


def greedy(model: torch.nn.Module) -> Policy:
    """The deterministic policy of an agent: the action of the largest logit (or Q-value)."""
    return lambda obs: model(obs.float() if obs.dtype == torch.float64 else obs).argmax(-1)
