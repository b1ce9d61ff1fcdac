"""Lab 4: the algorithms' maths against hand computations, and seeded behaviour of the agents.

Behaviour tests do not depend on the CPU: they check determinism (the same config gives the same
numbers; a run killed with SIGKILL and resumed ends with the same evaluation), files and counters,
and one learning check with a wide margin (3x a random policy's return)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import numpy as np
import torch

from dla.cli import main
from dla.rl.dqn import ReplayBuffer, epsilon, td_target
from dla.rl.ppo import explained_variance, gae, ppo_loss
from dla.rl.reinforce import discounted_returns, policy_weights, reinforce_loss, standardize

gym = pytest.importorskip("gymnasium")
TINY = ["track.tracker=none"]


# ------------------------------------------------------------------------------------------ maths


def test_discounted_returns_of_a_three_step_episode():
    r = torch.tensor([1.0, 2.0, 3.0])
    g = 0.9
    expected = torch.tensor([1 + g * 2 + g * g * 3, 2 + g * 3, 3.0])
    assert torch.allclose(discounted_returns(r, g), expected)
    batch = torch.stack([r, torch.tensor([1.0, 0.0, 0.0])], 1)  # two episodes, the second ended after step 1
    assert torch.allclose(discounted_returns(batch, g)[:, 1], torch.tensor([1.0, 0.0, 0.0]))


def test_reinforce_loss_by_hand():
    logits = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    actions = torch.tensor([0, 0, 1])
    weights = torch.tensor([2.71, 1.9, 1.0])
    loss, entropy = reinforce_loss(logits, actions, weights)
    logp = torch.tensor([0.5, torch.e / (torch.e + 1), torch.e ** 2 / (torch.e ** 2 + 1)]).log()
    assert torch.allclose(loss, -(logp * weights).mean())
    p = torch.softmax(logits, -1)
    assert torch.allclose(entropy, -(p * p.log()).sum(-1).mean())


def test_standardize_and_the_value_baseline():
    g = torch.tensor([3.0, 2.0, 1.0])
    s = standardize(g)
    assert torch.allclose(s, (g - 2) / (torch.tensor(2 / 3).sqrt() + 1e-8))
    assert abs(float(s.mean())) < 1e-6
    assert standardize(torch.tensor([5.0])).item() == 0.0  # a one-step batch: no division by zero
    values = torch.tensor([0.5, -0.5, 0.0], requires_grad=True)
    weights, targets = policy_weights(g, standardized=False, values=values)
    assert torch.equal(weights, g - values.detach()) and torch.equal(targets, g)
    assert not weights.requires_grad  # the baseline's gradient does not reach the policy
    weights, targets = policy_weights(g, standardized=True, values=values)
    assert torch.allclose(weights, s - values.detach()) and torch.allclose(targets, s)
    weights, _ = policy_weights(g, standardized=False, values=None)
    assert torch.equal(weights, g)


def test_dqn_target_with_and_without_terminal_states():
    rewards = torch.tensor([1.0, 0.5])
    next_q = torch.tensor([[2.0, 3.0], [4.0, -1.0]])
    assert torch.allclose(td_target(rewards, next_q, torch.tensor([0.0, 0.0]), 0.9), torch.tensor([1 + 0.9 * 3, 0.5 + 0.9 * 4]))
    assert torch.allclose(td_target(rewards, next_q, torch.tensor([0.0, 1.0]), 0.9), torch.tensor([1 + 0.9 * 3, 0.5]))
    assert epsilon(0, 100, 1.0, 0.1, 0.5) == 1.0
    assert epsilon(25, 100, 1.0, 0.1, 0.5) == pytest.approx(0.55)
    assert epsilon(80, 100, 1.0, 0.1, 0.5) == 0.1


def test_replay_buffer_wraps_and_round_trips():
    buf = ReplayBuffer(3, (2,), torch.float32)
    obs = np.arange(8.0, dtype=np.float32).reshape(4, 2)
    buf.add(obs[:2], obs[:2] + 1, np.array([0, 1]), np.array([1.0, 2.0]), np.zeros(2))
    assert len(buf) == 2 and buf.pos == 2 and not buf.full
    buf.add(obs[2:], obs[2:] + 1, np.array([0, 1]), np.array([3.0, 4.0]), np.array([0.0, 1.0]))
    assert len(buf) == 3 and buf.pos == 1 and buf.full
    assert buf.rewards.tolist() == [4.0, 2.0, 3.0] and buf.terminated.tolist() == [1.0, 0.0, 0.0]
    assert buf.obs[0].tolist() == [6.0, 7.0] and buf.next_obs[0].tolist() == [7.0, 8.0]
    once = ReplayBuffer(3, (2,), torch.float32)  # more transitions than rows at once: the last 3 stay, in ring order
    once.add(obs, obs + 1, np.array([0, 1, 0, 1]), np.array([1.0, 2.0, 3.0, 4.0]), np.zeros(4))
    assert once.rewards.tolist() == [4.0, 2.0, 3.0] and once.pos == 1 and once.full
    other = ReplayBuffer(3, (2,), torch.float32)
    other.load_state_dict(buf.state_dict())
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert all(torch.equal(a, b) for a, b in zip(buf.sample(5, g1), other.sample(5, g2)))


def test_gae_by_hand_with_termination_and_truncation():
    gamma, lam = 0.9, 0.8
    rewards = torch.tensor([[1.0], [1.0], [1.0]])
    values = torch.tensor([[0.5], [0.4], [0.3], [0.2]])
    zeros = torch.zeros(3, 1)
    adv = gae(rewards, values, zeros, zeros, gamma, lam)  # no episode end: bootstrap from v(s_3)
    d2 = 1 + gamma * 0.2 - 0.3
    d1 = 1 + gamma * 0.3 - 0.4
    d0 = 1 + gamma * 0.4 - 0.5
    expected = torch.tensor([d0 + gamma * lam * (d1 + gamma * lam * d2), d1 + gamma * lam * d2, d2])
    assert torch.allclose(adv[:, 0], expected)
    term = torch.tensor([[0.0], [1.0], [0.0]])  # the episode terminates at step 1: no bootstrap, no flow back
    adv = gae(rewards, values, term, term, gamma, lam)
    assert torch.allclose(adv[1, 0], torch.tensor(1 - 0.4))
    assert torch.allclose(adv[0, 0], torch.tensor(d0 + gamma * lam * (1 - 0.4)))
    trunc = torch.tensor([[0.0], [1.0], [0.0]])  # truncated at step 1: bootstrap from the final obs's v (row 2)
    adv = gae(rewards, values, zeros, trunc, gamma, lam)
    assert torch.allclose(adv[1, 0], torch.tensor(1 + gamma * 0.3 - 0.4))
    assert torch.allclose(adv[0, 0], torch.tensor(d0 + gamma * lam * (1 + gamma * 0.3 - 0.4)))


def test_ppo_clipped_objective_by_hand():
    logits = torch.log(torch.tensor([[0.6, 0.4], [0.3, 0.7], [0.5, 0.5]]))
    actions = torch.tensor([0, 1, 0])
    old_logp = torch.log(torch.tensor([0.4, 0.7, 0.5]))  # ratios 1.5, 1.0, 1.0
    adv = torch.tensor([1.0, -1.0, 2.0])
    values, returns = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    weight = torch.tensor([1.0, 1.0, 0.0])  # the third row is a reset step: ignored
    policy, value, entropy, clip_frac, kl = ppo_loss(logits, actions, old_logp, adv, values, returns, weight, 0.2, False)
    # row 0: min(1.5 * 1, 1.2 * 1) = 1.2; row 1: min(1 * -1, 1 * -1) = -1
    assert torch.allclose(policy, torch.tensor(-(1.2 - 1.0) / 2))
    assert torch.allclose(value, torch.tensor((1.0 + 0.0) / 2))
    assert torch.allclose(clip_frac, torch.tensor(0.5))
    assert torch.allclose(kl, torch.tensor(((1.5 - 1) - torch.log(torch.tensor(1.5))) / 2))
    p = torch.tensor([[0.6, 0.4], [0.3, 0.7]])
    assert torch.allclose(entropy, -(p * p.log()).sum(-1).mean())
    neg = torch.tensor([-1.0, -1.0, 2.0])  # a negative advantage with ratio 1.5: the unclipped 1.5 * -1 is taken
    policy, *_ = ppo_loss(logits, actions, old_logp, neg, values, returns, weight, 0.2, False)
    assert torch.allclose(policy, torch.tensor(-(-1.5 - 1.0) / 2))
    assert explained_variance(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0])) == 1.0
    # no weight (the loop drops reset rows before minibatching): the same numbers as weighting them 0
    kept = [x[:2] for x in (logits, actions, old_logp, neg, values, returns)]
    masked = ppo_loss(logits, actions, old_logp, neg, values, returns, weight, 0.2, True)
    dropped = ppo_loss(*kept, None, 0.2, True)
    assert all(torch.allclose(a, b) for a, b in zip(masked, dropped))


# -------------------------------------------------------------------------------------- behaviour


def train(tmp_path: Path, experiment: str, *overrides: str) -> Path:
    runs = tmp_path / "runs"
    assert main(["train", experiment, "budget=smoke", f"runs_dir={runs}", *TINY, *overrides]) == 0
    (run,) = [p for p in (runs / experiment).iterdir() if p.is_dir()]
    return run


@pytest.mark.parametrize("experiment", ["lab4-reinforce-cartpole", "lab4-dqn-cartpole", "lab4-ppo-cartpole",
                                        "lab4-reinforce-lunarlander", "lab4-dqn-lunarlander", "lab4-ppo-lunarlander"])
def test_every_lab4_experiment_trains_and_is_deterministic(experiment, tmp_path):
    a = train(tmp_path / "a", experiment)
    b = train(tmp_path / "b", experiment)
    ma = [json.loads(line) for line in (a / "metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(line) for line in (b / "metrics.jsonl").read_text().splitlines()]
    drop = ("epoch_time_s", "steps_time_s", "elapsed_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in ma] == \
           [{k: v for k, v in r.items() if k not in drop} for r in mb]
    summary = json.loads((a / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["kind"] == "rl-agent"
    assert summary["env_steps"] == ma[-1]["train_env_steps"] > 0
    assert {"val_return", "val_length", "val_solved", "train_loss", "train_episodes"} <= set(ma[-1])
    key = {"dqn": ("train_epsilon", "train_td_error"), "ppo": ("train_clip_frac", "train_approx_kl",
           "train_explained_variance"), "reinforce": ("train_entropy",)}[summary["algo"]]
    assert set(key) <= set(ma[-1]) or summary["algo"] == "dqn" and "train_epsilon" in ma[-1]
    assert (a / "plots" / "returns.png").is_file() and (a / "checkpoints" / "best.safetensors").is_file()


def test_eval_and_play(tmp_path, capsys):
    run = train(tmp_path, "lab4-ppo-cartpole")
    capsys.readouterr()
    assert main(["eval", str(run), "--episodes", "7", "--seed", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["episodes"] == 7 and result["seed"] == 3
    assert 0 <= result["test_solved_share"] <= 1 and result["test_length"] == result["test_return"]  # CartPole: +1 a step
    assert json.loads((run / "eval.json").read_text()) == result
    assert main(["eval", str(run), "--episodes", "7", "--seed", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == result  # seeded: the same episodes
    out = tmp_path / "cart.gif"
    assert main(["play", str(run), "--episodes", "2", "--out", str(out)]) == 0
    from PIL import Image

    with Image.open(out) as gif:
        assert gif.n_frames > 2 and gif.size == (300, 200)
    assert not list(tmp_path.glob(".*.tmp"))
    assert main(["play", str(run)]) == 0
    manifest = json.loads((run / "plots" / "manifest.json").read_text())
    assert {"play.gif", "returns.png"} <= {f["file"] for f in manifest["figures"]}


def test_reinforce_with_a_value_baseline_learns_cartpole(tmp_path):
    """Wide margin: a random policy averages about 22 on CartPole; after 100 episodes the best greedy
    evaluation is above 3x that (seeded, so a failure reproduces)."""
    run = train(tmp_path, "lab4-reinforce-cartpole", "rl.baseline=value", "rl.episodes=100", "rl.eval_every=20",
                "rl.eval_episodes=20")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_val_return"] > 3 * 22


def test_stop_when_solved_ends_the_run(tmp_path, monkeypatch):
    from dla.rl import task as task_module

    monkeypatch.setattr(task_module, "SOLVE_EPISODES", 1)
    run = train(tmp_path, "lab4-ppo-cartpole", "rl.stop_when_solved=true", "rl.total_steps=4096", "rl.eval_every=256",
                "data.name=CartPole-v0")  # CartPole-v0's threshold 195: a smoke run can reach it... or not
    summary = json.loads((run / "summary.json").read_text())
    rounds = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    solved = [r["epoch"] for r in rounds if r["val_solved"] == 1.0]
    assert summary["epochs_run"] == (solved[0] if solved else len(rounds))
    assert ("stop_reason" in summary) == bool(solved)


DQN_RESUME = ["lab4-dqn-cartpole", "budget=smoke", "rl.total_steps=3072", "rl.eval_every=512", "rl.gradient_steps=32",
              "track.tracker=none"]


@pytest.mark.slow
def test_a_dqn_run_killed_and_resumed_ends_as_an_uninterrupted_one(tmp_path):
    """SIGKILL after the second checkpoint, resume: the replay buffer, target net, counters and RNG come back,
    so the final evaluation and every round's record equal an uninterrupted run's."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    whole = tmp_path / "whole"
    subprocess.run([sys.executable, "-m", "dla", "train", *DQN_RESUME, f"runs_dir={whole}"], check=True, env=env,
                   capture_output=True, timeout=600)
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "dla", "train", *DQN_RESUME, f"runs_dir={killed}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    metrics = None
    while time.time() < deadline and proc.poll() is None:
        found = list(killed.glob("*/*/metrics.jsonl"))
        if found and len(found[0].read_text().splitlines()) >= 2:
            metrics = found[0]
            break
        time.sleep(0.05)
    assert metrics is not None, "the run ended before its second round was written"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run = metrics.parent
    assert not (run / "summary.json").is_file()  # killed: no summary was written
    subprocess.run([sys.executable, "-m", "dla", "train", "--resume", str(run)], check=True, env=env,
                   capture_output=True, timeout=600)
    (ref,) = list(whole.glob("*/*/summary.json"))
    a, b = json.loads(ref.read_text()), json.loads((run / "summary.json").read_text())
    assert b["status"] == "completed"
    assert {k: a[k] for k in a if k.startswith("test_")} == {k: b[k] for k in b if k.startswith("test_")}
    drop = ("epoch_time_s", "steps_time_s", "elapsed_s")
    rounds = lambda p: [{k: v for k, v in json.loads(x).items() if k not in drop} for x in p.read_text().splitlines()]  # noqa: E731
    assert rounds(ref.parent / "metrics.jsonl") == rounds(run / "metrics.jsonl")


def test_the_baselines_sweep_writes_its_variant_table_and_seed_bands(tmp_path):
    """dla sweep lab4-baselines narrowed to one seed: four variants, solved.md with a row each, returns.png,
    both in the sweep's manifest."""
    assert main(["sweep", "lab4-baselines", "budget=smoke", "seed=0", f"runs_dir={tmp_path}", *TINY]) == 0
    (sweep,) = (tmp_path / "lab4-baselines").iterdir()
    rows = [line for line in (sweep / "solved.md").read_text().splitlines() if line.startswith("| standardize=")]
    assert len(rows) == 4 and all("/1 |" in row for row in rows)
    manifest = json.loads((sweep / "manifest.json").read_text())
    assert {"returns.png", "curves.png"} <= {f["file"] for f in manifest["figures"]}
    assert "solved.md" in {t["file"] for t in manifest["tables"]}
