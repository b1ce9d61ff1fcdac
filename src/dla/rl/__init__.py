"""Lab 4, deep reinforcement learning: gymnasium environments (`envs`), the shared agent task (`task`)
and one file per algorithm, each read top to bottom: `reinforce`, `dqn`, `ppo`. `play` renders episodes."""
