"""dla's Lab 4 agents against stable-baselines3 with the same algorithm and hyperparameters, in the same run.

    pip install stable-baselines3==2.9.2     # a benchmark-only dependency (pyproject's `bench` extra)
    python benchmarks/rl_vs_sb3.py [--cases ppo-cartpole,dqn-cartpole,ppo-lunarlander] [--seeds 5]

Cases: rl-baselines3-zoo's hyperparameters, which dla's configs copy (`lab4-ppo-cartpole`,
`lab4-dqn-cartpole`, `lab4-ppo-lunarlander`). One difference is stated rather than hidden: zoo decays
PPO's clip range on CartPole linearly, dla keeps 0.2, and so does SB3 here.

Each run is its own process, one after another (never two at once), for each seed and each system.
Both stop at their first evaluation whose mean over 100 greedy episodes reaches the env's threshold
(475 for CartPole-v1, 200 for LunarLander-v3), evaluated on the same schedule and the same seeded
episodes: dla's own evaluation (`dla.rl.envs.run_episodes`, the seeds of dla's validation), called with
SB3's deterministic `predict` on SB3's side, after the same number of env steps (the end of a dla
round). Reported per system, medians over seeds:

- env steps and time to solve: `train` counts collection and updates, `with eval` adds the
  evaluations (the same episodes on both sides); process start-up is reported apart;
- env steps/s: env steps over the time spent collecting and updating.

The ratios are SB3's time over dla's (above 1: dla is faster) and dla's steps/s over SB3's.
Run it alone on an idle machine: anything else running skews both sides.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STARTED = time.perf_counter()
REPO = Path(__file__).resolve().parents[1]

# case: dla's experiment, and SB3's constructor and settings with the same values
CASES = {
    "ppo-cartpole": {
        "experiment": "lab4-ppo-cartpole", "env": "CartPole-v1", "n_envs": 8, "algo": "PPO", "total": 100_000,
        "eval_every": 10_240, "eval_episodes": 100,
        "kwargs": dict(n_steps=32, batch_size=256, n_epochs=20, gae_lambda=0.8, gamma=0.98, learning_rate="linear:1e-3",
                       clip_range=0.2, ent_coef=0.0, vf_coef=0.5, max_grad_norm=0.5),
    },
    "dqn-cartpole": {
        "experiment": "lab4-dqn-cartpole", "env": "CartPole-v1", "n_envs": 1, "algo": "DQN", "total": 50_000,
        "eval_every": 2_560, "eval_episodes": 100,
        "kwargs": dict(learning_rate=2.3e-3, batch_size=64, buffer_size=100_000, learning_starts=1000, gamma=0.99,
                       target_update_interval=10, train_freq=256, gradient_steps=128, exploration_fraction=0.16,
                       exploration_initial_eps=1.0, exploration_final_eps=0.04, max_grad_norm=10.0,
                       policy_kwargs={"net_arch": [256, 256]}),
    },
    "ppo-lunarlander": {
        "experiment": "lab4-ppo-lunarlander", "env": "LunarLander-v3", "n_envs": 16, "algo": "PPO", "total": 1_000_000,
        "eval_every": 65_536, "eval_episodes": 20,
        "kwargs": dict(n_steps=1024, batch_size=64, n_epochs=4, gae_lambda=0.98, gamma=0.999, learning_rate=3e-4,
                       clip_range=0.2, ent_coef=0.01, vf_coef=0.5, max_grad_norm=0.5),
    },
}


def sb3_worker(case: str, seed: int) -> dict:
    """One SB3 run in this process, stopped at its first solved evaluation."""
    import numpy as np
    import torch
    from stable_baselines3 import DQN, PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    sys.path.insert(0, str(REPO / "src"))
    from dla.config import EnvConfig
    from dla.rl.envs import VAL_SEED, env_info, run_episodes

    spec = CASES[case]
    kwargs = dict(spec["kwargs"])
    if isinstance(kwargs.get("learning_rate"), str):  # linear decay to 0 over the run, as dla's sched.name=linear
        start = float(kwargs["learning_rate"].split(":")[1])
        kwargs["learning_rate"] = lambda progress_remaining: progress_remaining * start
    env_cfg = EnvConfig(name=spec["env"])
    threshold = env_info(env_cfg).threshold

    class EvalAndStop(BaseCallback):
        """dla's evaluation after every `eval_every` env steps (at a rollout's start, i.e. after the updates of
        the last one, where a dla round ends); stops at the first solved one."""

        def __init__(self):
            super().__init__()
            self.next_eval, self.eval_s, self.solved, self.stop, self.evals = spec["eval_every"], 0.0, None, False, []

        def _on_training_start(self):
            self.start = time.perf_counter()

        def _evaluate(self):
            began = time.perf_counter()
            policy = lambda obs: torch.as_tensor(self.model.predict(obs.numpy(), deterministic=True)[0])  # noqa: E731
            returns, _ = run_episodes(policy, env_cfg, spec["eval_episodes"], VAL_SEED)
            if returns.mean() >= threshold and len(returns) < 100:  # a good mean over a few episodes: check 100
                returns, _ = run_episodes(policy, env_cfg, 100, VAL_SEED)
            self.eval_s += time.perf_counter() - began
            self.evals.append((self.num_timesteps, float(returns.mean())))
            if returns.mean() >= threshold and self.solved is None:
                elapsed = time.perf_counter() - self.start
                self.solved = {"env_steps": self.num_timesteps, "time_s": elapsed, "train_s": elapsed - self.eval_s}
                self.stop = True

        def _on_rollout_start(self):
            if self.num_timesteps >= self.next_eval:
                self.next_eval += spec["eval_every"]
                self._evaluate()

        def _on_step(self):
            return not self.stop

    env = make_vec_env(spec["env"], n_envs=spec["n_envs"], seed=seed)
    algo = {"PPO": PPO, "DQN": DQN}[spec["algo"]]
    model = algo("MlpPolicy", env, seed=seed, device="cpu", verbose=0, **kwargs)
    callback = EvalAndStop()
    startup = time.perf_counter() - STARTED
    began = time.perf_counter()
    model.learn(spec["total"], callback=callback)
    if not callback.stop and callback.solved is None:  # the last rollout's evaluation
        callback._evaluate()
    learn_s = time.perf_counter() - began
    train_s = learn_s - callback.eval_s
    out = {"system": "SB3", "seed": seed, "startup_s": startup, "env_steps": int(model.num_timesteps),
           "steps_per_s": model.num_timesteps / train_s, "last_eval": callback.evals[-1][1] if callback.evals else None,
           "torch_threads": torch.get_num_threads(), "numpy": np.__version__}
    if callback.solved:
        out.update({"steps_to_solve": callback.solved["env_steps"], "train_s_to_solve": callback.solved["train_s"],
                    "time_s_to_solve": callback.solved["time_s"]})
    return out


def dla_run(case: str, seed: int) -> dict:
    """One `dla train` process, stopped at its first solved evaluation; its numbers from the run directory."""
    spec = CASES[case]
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "dla", "train", spec["experiment"], f"seed={seed}", "rl.stop_when_solved=true",
               f"runs_dir={tmp}", "track.tracker=none", "name=bench"]
        began = time.perf_counter()
        subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wall = time.perf_counter() - began
        (run,) = [p for p in (Path(tmp) / "bench").iterdir() if p.is_dir()]
        summary = json.loads((run / "summary.json").read_text())
        history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps_time = sum(r["steps_time_s"] for r in history)
    out = {"system": "dla", "seed": seed, "startup_s": summary["first_step_s"], "wall_s": wall,
           "env_steps": summary["env_steps"], "steps_per_s": summary["env_steps"] / steps_time,
           "last_eval": history[-1]["val_return"], "test_return": summary.get("test_return")}
    if "env_steps_to_solve" in summary:
        out.update({"steps_to_solve": summary["env_steps_to_solve"], "train_s_to_solve": summary["train_time_to_solve_s"],
                    "time_s_to_solve": summary["time_to_solve_s"]})
    return out


def sb3_run(case: str, seed: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", case, "--seed", str(seed)]
    began = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    out["wall_s"] = time.perf_counter() - began
    return out


def med(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def fmt(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{x:,.{digits}f}"


def table(results: dict[str, dict[str, list[dict]]]) -> str:
    lines = ["| Case | System | seeds solved | env steps to solve | train time to solve (s) | with eval (s) | "
             "start-up (s) | env steps/s |", "|---|---|---|---:|---:|---:|---:|---:|"]
    ratios = ["", "| Case | time to solve, SB3 / dla (train) | (with eval) | env steps/s, dla / SB3 |", "|---|---:|---:|---:|"]
    for case, systems in results.items():
        for system, rows in systems.items():
            solved = sum("steps_to_solve" in r for r in rows)
            lines.append(f"| {case} | {system} | {solved}/{len(rows)} | {fmt(med(rows, 'steps_to_solve'), 0)} | "
                         f"{fmt(med(rows, 'train_s_to_solve'))} | {fmt(med(rows, 'time_s_to_solve'))} | "
                         f"{fmt(med(rows, 'startup_s'))} | {fmt(med(rows, 'steps_per_s'), 0)} |")
        dla, sb3 = systems.get("dla", []), systems.get("SB3", [])
        if dla and sb3:
            def ratio(key, inverse=False):
                a, b = med(sb3, key), med(dla, key)
                return None if a is None or b is None else (b / a if inverse else a / b)
            ratios.append(f"| {case} | {fmt(ratio('train_s_to_solve'), 2)}x | {fmt(ratio('time_s_to_solve'), 2)}x | "
                          f"{fmt(ratio('steps_per_s', inverse=True), 2)}x |")
    return "\n".join(lines + ratios) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default="ppo-cartpole,dqn-cartpole,ppo-lunarlander",
                        help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 per case and system (default 5)")
    parser.add_argument("--json", type=Path, help="also write every run's numbers here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(sb3_worker(args.worker, args.seed)))
        return 0
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown or not cases:
        parser.error(f"--cases: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(CASES)}")
    if args.seeds < 1:
        parser.error(f"--seeds: must be >= 1, got {args.seeds}")
    try:
        import stable_baselines3
    except ImportError:
        parser.error("needs stable-baselines3: pip install stable-baselines3==2.9.2")
    sys.path.insert(0, str(REPO / "src"))
    from dla.device import cpu_description

    print(f"{cpu_description()}; stable-baselines3 {stable_baselines3.__version__}; seeds 0-{args.seeds - 1}", flush=True)
    results: dict[str, dict[str, list[dict]]] = {}
    for case in cases:
        results[case] = {"dla": [], "SB3": []}
        for seed in range(args.seeds):
            for system, run in (("dla", dla_run), ("SB3", sb3_run)):
                row = run(case, seed)
                results[case][system].append(row)
                print(f"{case} seed {seed} {system}: solved at {row.get('steps_to_solve', 'never')} steps, "
                      f"train {fmt(row.get('train_s_to_solve'))} s, with eval {fmt(row.get('time_s_to_solve'))} s, "
                      f"{fmt(row['steps_per_s'], 0)} steps/s, last eval {fmt(row['last_eval'])}"
                      + (f", test {fmt(row['test_return'])} (100 episodes, dla's test seeds)" if "test_return" in row else "")
                      + ", "
                      f"process {row['wall_s']:.1f} s", flush=True)
    print()
    print(table(results), end="")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
