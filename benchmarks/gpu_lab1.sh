#!/usr/bin/env bash
# Lab 1.2 on CIFAR-10 at the original's width, on one GPU: the six nets of the depth grid
# (plain and residual, depth 9/17/48, width 64, the 2048-1024-1024 head), bf16, channels_last,
# torch.compile and a large batch, then the sweep's table in the original's columns.
#
#   benchmarks/gpu_lab1.sh                       # budget=original, 15 epochs per net, batch 512
#   EPOCHS=30 benchmarks/gpu_lab1.sh             # more epochs (the original: up to 200, patience 20)
#   BUDGET=smoke benchmarks/gpu_lab1.sh          # the whole path in a minute on a CPU (the tests run this)
#   CIFAR_DIR=../shared/data benchmarks/gpu_lab1.sh   # import CIFAR-10 from a folder first
#
# Data: CIFAR-10 needs its training set. On a machine with a network the loader downloads it
# (torchvision's CIFAR10 into the data root) the first time. Offline, point CIFAR_DIR at a folder
# holding cifar10_test.npz and cifar10_train_jpeg_q75.npz (170 MB together: more than a 64 MiB
# transfer limit allows, so on such a device download it there or copy the folder by other means).
#
# Extra arguments are passed to `dla sweep` as overrides, e.g. train.batch_size=1024.
# The sweep is resumable: running the script again skips finished nets.
set -euo pipefail

# runs go to ./runs/lab1-depth/ of the current folder, as with any dla command
HERE=$(cd "$(dirname "$0")/.." && pwd)
DLA=${DLA:-$HERE/.venv/bin/dla}
[ -x "$DLA" ] || DLA=dla
PY=$(dirname "$(command -v "$DLA")")/python
[ -x "$PY" ] || PY=python3
BUDGET=${BUDGET:-original}
EPOCHS=${EPOCHS:-15}
BATCH=${BATCH:-512}

case "$EPOCHS" in '' | *[!0-9]* | 0) echo "gpu_lab1.sh: EPOCHS must be a positive integer, got '$EPOCHS'" >&2; exit 2 ;; esac
case "$BATCH" in '' | *[!0-9]* | 0) echo "gpu_lab1.sh: BATCH must be a positive integer, got '$BATCH'" >&2; exit 2 ;; esac

# torch.compile pays on a GPU; on a CPU it does not for these nets (RESULTS.md), so it is off there
# unless COMPILE=true is given.
if [ -z "${COMPILE:-}" ]; then
  COMPILE=$("$PY" -c 'import torch; print("true" if torch.cuda.is_available() else "false")')
fi
DEVICE=$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")')

if [ -n "${CIFAR_DIR:-}" ]; then
  "$DLA" data import cifar10 "$CIFAR_DIR"
fi

args=("budget=$BUDGET" data=cifar10 "train.compile=$COMPILE")
if [ "$BUDGET" != smoke ]; then
  # a fixed epoch budget: a full original run (200 epochs, patience 20) is hours, not 10 minutes
  args+=("train.epochs=$EPOCHS" train.patience=null "train.batch_size=$BATCH")
fi

echo "gpu_lab1.sh: dla sweep lab1-depth ${args[*]} $* on $DEVICE"
start=$(date +%s)
"$DLA" sweep lab1-depth "${args[@]}" "$@"
echo "gpu_lab1.sh: the grid took $(( $(date +%s) - start )) s on $DEVICE"
