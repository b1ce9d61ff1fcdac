"""The reinforcement-learning kind (Lab 4): an agent trained in a gymnasium env by REINFORCE, DQN or PPO.

The env is the run's data section (`data.name`: a gymnasium id), the algorithm its `rl:` section,
and the networks `model.name=policy-mlp` or `policy-cnn`. Training is the one loop (`dla.train.loop`):
a round is a number of updates from fresh experience, its validation the greedy evaluation episodes.
"""

from __future__ import annotations

import os

from dla.config import EnvConfig
from dla.errors import ConfigError
from dla.kind import RL_AGENT, Column, RunKind, register_kind
from dla.models import MODELS

NOT_FOR_AGENTS = {  # train settings of the classifiers that an agent would ignore: refused
    "adversarial": "none", "label_smoothing": 0.0, "channels_last": False, "compile": False, "precision": "fp32",
    "grad_stats_every": None, "max_steps": None,
}


@register_kind
class Agent(RunKind):
    name = RL_AGENT
    title = "reinforcement-learning agent"
    data_config = EnvConfig
    models = ("policy-mlp", "policy-cnn")
    commands = frozenset({"dla play"})
    unit = "round"
    table_columns = (("run", "name", "str"), ("env", "env", "str"), ("algo", "algo", "str"),
                     ("episodes", "episodes", "int"), ("env steps", "env_steps", "int"),
                     ("best val return", "best_val_return", "float"), ("test return", "test_return", "float"),
                     ("test solved share (%)", "test_solved_share", "pct"), ("time (s)", "train_time_s", "time"))
    sweep_columns = (("Run", "name", "str"), ("test return", "test_return", "float"),
                     ("test std", "test_return_std", "float"), ("episodes to solve", "episodes_to_solve", "str"),
                     ("env steps to solve", "env_steps_to_solve", "str"), ("time to solve (s)", "time_to_solve_s", "str"),
                     ("episodes", "episodes", "int"), ("time (s)", "train_time_s", "time"))
    report_columns = (Column("test return", "test_return", "float", True),
                      Column("test return std", "test_return_std", "float", False),
                      Column("solved share (%)", "test_solved_share", "pct", True),
                      Column("episodes to solve", "episodes_to_solve", "int", False),
                      Column("env steps to solve", "env_steps_to_solve", "int", False),
                      Column("train time (s)", "train_time_s", "time"))
    fallback = Column("best val return", "best_val_return", "float", True)
    curve_metrics = ("val_return", "val_length")

    def check(self, cfg):
        from dla.rl.envs import env_info

        super().check(cfg)
        rl, train = cfg.rl, cfg.train
        for key, default in NOT_FOR_AGENTS.items():
            if getattr(train, key) != default:
                raise ConfigError(f"train.{key}={getattr(train, key)} does not apply to a {self.title}; remove it")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError("a reinforcement-learning run is one process: run it without torchrun")
        if train.monitor not in ("val_return", "val_length", "val_solved"):
            raise ConfigError(f"train.monitor: an agent is monitored by val_return (its mean evaluation return), "
                              f"not {train.monitor}")
        if rl.algo == "reinforce" and rl.episodes is None:
            raise ConfigError("rl.episodes: REINFORCE trains for a number of episodes; set rl.episodes (e.g. 1000)")
        if rl.algo != "reinforce" and rl.total_steps is None:
            raise ConfigError(f"rl.total_steps: {rl.algo} trains for a number of env steps; set rl.total_steps (e.g. 100000)")
        if rl.algo == "reinforce" and rl.eval_every % cfg.data.num_envs:
            raise ConfigError(f"rl.eval_every={rl.eval_every} episodes: must be a multiple of data.num_envs="
                              f"{cfg.data.num_envs} (each update plays one episode per env)")
        info = env_info(cfg.data)
        if info.n_actions is None:
            what = "DQN needs a discrete action space" if rl.algo == "dqn" else \
                f"dla's {rl.algo} has a categorical policy: it needs a discrete action space"
            hint = " (try data.continuous=false)" if cfg.data.continuous else ""
            raise ConfigError(f"data.name={cfg.data.name}: its actions are continuous; {what}{hint}")
        if info.image != (cfg.model.name == "policy-cnn"):
            raise ConfigError(f"model.name={cfg.model.name}: {cfg.data.name}'s observations are "
                              f"{'frames: use policy-cnn' if info.image else 'vectors: use policy-mlp'}")
        cfg.model.critic = rl.algo == "ppo" or rl.baseline == "value"  # what the algorithm needs
        if rl.algo != "reinforce" and rl.baseline != "none":
            raise ConfigError(f"rl.baseline is REINFORCE's; {rl.algo} has its own value estimate")
        if rl.algo == "dqn" and train.batch_size > rl.buffer_size:
            raise ConfigError(f"train.batch_size={train.batch_size} exceeds rl.buffer_size={rl.buffer_size}")

    def load_data(self, cfg, data_root, run=None, quiet=False):
        from dla.rl.envs import env_info

        return env_info(cfg.data)

    def describe_data(self, info):
        threshold = f", solved at {info.threshold:g}" if info.threshold is not None else ""
        return f"{info.id} (obs {'x'.join(map(str, info.obs_shape))}, {info.n_actions} actions{threshold})"

    def make_task(self, cfg, data):
        from dla.rl.dqn import DQNTask
        from dla.rl.ppo import PPOTask
        from dla.rl.reinforce import ReinforceTask

        return {"reinforce": ReinforceTask, "dqn": DQNTask, "ppo": PPOTask}[cfg.rl.algo](cfg, data)

    def build_model(self, cfg):
        from dla.rl.envs import env_info

        info = env_info(cfg.data)
        return MODELS[cfg.model.name].build(cfg.model, info.obs_shape, info.n_actions)

    def class_names(self, cfg):
        raise ConfigError("an agent has actions, not classes")

    def finish(self, model, run, cfg, task, tracker, step):
        """The return curve (evaluation mean +- std across episodes) against episodes or env steps."""
        from dla.manifest import PLOTS_TITLE, write_manifest
        from dla.report.plots import plot_returns

        task.close()
        history = run.read_metrics()
        if history:
            x = "train_episodes" if cfg.rl.algo == "reinforce" else "train_env_steps"
            plot_returns({cfg.rl.algo: [history]}, run.plots / "returns.png", f"{cfg.name} / {run.name}: "
                         f"greedy evaluation return (band: std over {cfg.rl.eval_episodes} episodes)", x)
            write_manifest(run.plots, "plots", PLOTS_TITLE, [{"file": "returns.png", "caption": "evaluation return"}])

    def eval_options(self, cfg, episodes, seed):
        if episodes is not None:
            cfg.rl.test_episodes = episodes
        if seed is not None:
            cfg.rl.test_seed = seed

    def eval_line(self, run, cfg, data, task, test):
        rl = cfg.rl
        share = (f", {100 * test['solved_share']:.0f}% of episodes at or above {data.threshold:g}"
                 if "solved_share" in test else "")
        return ({"episodes": rl.test_episodes, "seed": rl.test_seed},
                f"{run.path}: {data.id}, {rl.test_episodes} greedy episodes (seeds {rl.test_seed}+): return "
                f"{test['return']:.1f} ± {test['return_std']:.1f}, length {test['length']:.1f}{share}")

    def sweep_figures(self, sweep_dir, runs):
        """Runs that differ only in their seed form a variant: its return curves as mean +- std across seeds
        (returns.png), and solved.md: per variant, how many seeds solved and the median episodes, env steps
        and seconds (training and evaluation) to solve."""
        from statistics import median

        from dla.report.plots import plot_returns
        from dla.report.tables import markdown_table

        variants: dict[str, list] = {}
        for _, combo, summary, history in runs:
            label = ", ".join(f"{k.split('.')[-1]}={str(v).lower()}" for k, v in combo.items() if k != "seed") or summary["algo"]
            variants.setdefault(label, []).append((summary, history))
        rows = []
        for label, members in variants.items():
            solved = [s for s, _ in members if "episodes_to_solve" in s]
            med = (lambda key: median(s[key] for s in solved) if solved else None)  # noqa: E731
            rows.append({"name": label, "seeds": len(members), "solved": f"{len(solved)}/{len(members)}",
                         "episodes": med("episodes_to_solve"), "steps": med("env_steps_to_solve"),
                         "time": med("time_to_solve_s"),
                         "test": median(s.get("test_return", float("nan")) for s, _ in members)})
        columns = (("Variant", "name", "str"), ("seeds solved", "solved", "str"),
                   ("median episodes to solve", "episodes", "int"), ("median env steps to solve", "steps", "int"),
                   ("median time to solve (s)", "time", "time"), ("median test return", "test", "float"))
        (sweep_dir / "solved.md").write_text(markdown_table(rows, columns))
        print(f"\n{sweep_dir / 'solved.md'}\n{markdown_table(rows, columns)}", end="")
        algos = {s["algo"] for _, _, s, _ in runs}
        x = "train_episodes" if algos == {"reinforce"} else "train_env_steps"
        plot_returns({label: [h for _, h in members] for label, members in variants.items()}, sweep_dir / "returns.png",
                     f"{sweep_dir.parent.name}: greedy evaluation return, mean +- std across seeds\n"
                     "(a run stopped when solved counts with its last evaluation after it stopped)", x)
        return ([{"file": "returns.png", "caption": "evaluation return, mean and std across seeds, per variant"}],
                [{"file": "solved.md", "caption": "seeds solved and the median cost of solving, per variant"}])
