#!/usr/bin/env bash
# Lab 4, exercise 3.3 on one GPU: DQN on CarRacing-v3 with discrete actions (a Nature-DQN CNN on four
# stacked grey 84x84 frames), then its greedy evaluation and a GIF of one episode.
#
#   benchmarks/gpu_lab4.sh                        # 500k env steps (the config's budget)
#   STEPS=200000 benchmarks/gpu_lab4.sh           # another budget
#   BUDGET=smoke benchmarks/gpu_lab4.sh           # the whole path in about a minute on a CPU
#
# No data is needed: gymnasium's Box2D env draws its own tracks. Extra arguments are overrides.
set -euo pipefail

HERE=$(cd "$(dirname "$0")/.." && pwd)
DLA=${DLA:-$HERE/.venv/bin/dla}
[ -x "$DLA" ] || DLA=dla
PY=$(dirname "$(command -v "$DLA")")/python
[ -x "$PY" ] || PY=python3
BUDGET=${BUDGET:-full}
STEPS=${STEPS:-500000}
case "$STEPS" in '' | *[!0-9]* | 0) echo "gpu_lab4.sh: STEPS must be a positive integer, got '$STEPS'" >&2; exit 2 ;; esac
DEVICE=$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")')

args=(track.tracker=tensorboard)
if [ "$BUDGET" = smoke ]; then
  args+=(budget=smoke)
else
  args+=("rl.total_steps=$STEPS")
fi
RUNS=${RUNS:-runs}
echo "gpu_lab4.sh: dla train lab4-dqn-carracing ${args[*]} $* on $DEVICE"
start=$(date +%s)
"$DLA" train lab4-dqn-carracing "runs_dir=$RUNS" "${args[@]}" "$@"
echo "gpu_lab4.sh: training took $(( $(date +%s) - start )) s on $DEVICE"
RUN=$(ls -td "$RUNS"/lab4-dqn-carracing/*/ | head -1)
"$DLA" eval "$RUN"
"$DLA" play "$RUN" --episodes 1
