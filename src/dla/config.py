"""Typed experiment configs: YAML files loaded into dataclasses, `key=value` overrides, validation.

An experiment file is YAML whose top-level sections mirror `ExperimentConfig`. It may also hold
`presets:`, named groups of overrides that a user picks with `GROUP=NAME` (e.g. `budget=smoke`).
Every value is checked against the field's type before anything runs; a bad one raises a
`ConfigError` that names the key and what is valid.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from dla.errors import ConfigError
from dla.yamlfile import read_yaml
from dla.kind import DATA_SECTIONS, IMAGE_CLASSIFIER, RL_AGENT, legacy_kind, registered


@dataclass
class DataConfig:
    """Which data set, how it is split and augmented."""

    name: Literal["mnist", "fashion-mnist", "cifar10"] = "mnist"
    val_size: int = 5000  # images carved from the training set (fixed seed) for validation
    train_subset: int | None = None  # keep only this many training images (after the val split)
    test_subset: int | None = None  # evaluate on only the first N test images
    split_seed: int = 0
    augment: Literal["none", "crop-flip", "crop", "autoaugment"] = "none"
    classes: list[int] | None = None  # train on these classes only (e.g. [0,1,2,3,4,5]); the rest are held out
    download: bool = True  # try the canonical source when the data set is not on disk
    # MNIST and Fashion-MNIST only (Lab 1, exercises 2.2 and 2.3, see dla.data.canvas):
    canvas: int | None = None  # paste every image at a random place in a black canvas of this size (e.g. 64)
    background_class: bool = False  # add a class "background" (empty, off-centre, too large, too small crops)

    def validate(self) -> None:
        check_positive(self, "val_size", "train_subset", "test_subset", prefix="data.")
        check_seed(self.split_seed, "data.split_seed")
        if self.canvas is not None and not 28 <= self.canvas <= 512:
            raise ConfigError(f"data.canvas: a canvas side in [28, 512] px for 28x28 images, got {self.canvas}")
        if self.canvas is not None and self.background_class:
            raise ConfigError("data.canvas and data.background_class: choose one (canvases for CAM, "
                              "a background class for the fully-convolutional detector)")
        if self.classes is not None and (len(set(self.classes)) < 2 or min(self.classes) < 0):
            raise ConfigError(f"data.classes: needs at least two distinct class indices >= 0, got {self.classes}")


@dataclass
class EmbeddingDataConfig(DataConfig):
    """An image set for metric learning: DataConfig's keys, the validation gallery and the few-shot test."""

    gallery: int = 10000  # training images the validation queries are ranked against (the test: all of them)
    shots: list[int] = field(default_factory=lambda: [1, 5])  # with data.classes: few-shot on the other classes
    episodes: int = 20  # few-shot episodes (support sets drawn) per number of shots

    def validate(self) -> None:
        super().validate()
        check_positive(self, "gallery", "episodes", prefix="data.")
        if not self.shots or min(self.shots) < 1 or len(set(self.shots)) < len(self.shots):
            raise ConfigError(f"data.shots: distinct numbers of examples per class >= 1, got {self.shots}")
        if self.canvas is not None or self.background_class:
            raise ConfigError("data.canvas and data.background_class are for classifiers, not an image embedding")


@dataclass
class DetectionDataConfig:
    """Canvases of digits for a dense detector (Lab 1.2.2): made afresh every epoch from the training digits
    (dla.data.canvas), validated on fixed canvases of the validation digits, tested on fixed layout groups."""

    name: Literal["mnist", "fashion-mnist"] = "mnist"
    val_size: int = 5000  # digits carved from the training set (fixed seed): the validation canvases' digits
    train_subset: int | None = None  # keep only this many training digits
    split_seed: int = 0
    download: bool = True
    canvas: int = 128  # side of a training canvas, px
    digits: list[int] = field(default_factory=lambda: [1, 8])  # digits per training canvas, min and max
    digit_sizes: list[int] = field(default_factory=lambda: [12, 64])  # a digit's side, px, min and max
    gap: int = 1  # px of black at least between two digits' frames
    packed: float = 0.5  # share of training canvases whose digits are packed side by side, `gap` px apart
    canvases: int = 8000  # training canvases per epoch
    val_canvases: int = 500  # per validation pass (the layout groups of the test, from validation digits)
    test_canvases: int = 200  # per layout group of the test (dla detect --eval: 500)

    def validate(self) -> None:
        check_positive(self, "val_size", "train_subset", "canvases", "val_canvases", "test_canvases", prefix="data.")
        check_seed(self.split_seed, "data.split_seed")
        if len(self.digits) != 2 or not 1 <= self.digits[0] <= self.digits[1] <= 64:
            raise ConfigError(f"data.digits: min,max digits per canvas with 1 <= min <= max <= 64, got {self.digits}")
        if len(self.digit_sizes) != 2 or not 8 <= self.digit_sizes[0] <= self.digit_sizes[1]:
            raise ConfigError(f"data.digit_sizes: min,max px with 8 <= min <= max, got {self.digit_sizes}")
        if not 32 <= self.canvas <= 1024:
            raise ConfigError(f"data.canvas: a training canvas side in [32, 1024] px, got {self.canvas}")
        if self.digit_sizes[1] > self.canvas:
            raise ConfigError(f"data.digit_sizes: the largest digit ({self.digit_sizes[1]} px) does not fit the "
                              f"{self.canvas} px canvas (data.canvas)")
        if not 0 <= self.gap <= 32:
            raise ConfigError(f"data.gap: px between digits in [0, 32], got {self.gap}")
        if not (math.isfinite(self.packed) and 0 <= self.packed <= 1):
            raise ConfigError(f"data.packed: a share in [0, 1], got {self.packed}")


@dataclass
class TextDataConfig:
    """A text corpus for language modelling (Lab 2.1): tokenizer, context length and contiguous splits."""

    name: Literal["inferno"] = "inferno"
    path: str | None = None  # train on any UTF-8 text file instead of the named corpus
    tokenizer: Literal["char", "bpe"] = "char"
    vocab_size: int = 5549  # bpe only (the original's SentencePiece-BPE size)
    min_frequency: int = 2  # bpe only
    block_size: int = 64  # tokens of context per training window
    splits: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])  # train/val/test, contiguous, in order
    download: bool = True  # fetch Project Gutenberg #997 when the Inferno is not on disk

    def validate(self) -> None:
        check_positive(self, "vocab_size", "min_frequency", "block_size", prefix="data.")
        if len(self.splits) != 3 or min(self.splits) < 0 or self.splits[0] <= 0 or self.splits[1] <= 0:
            raise ConfigError(
                f"data.splits: three fractions train,val,test with train and val > 0 (test 0 scores on val), "
                f"got {self.splits}"
            )



@dataclass
class TopicDataConfig:
    """A topic-classification data set (Lab 2.3) for a pretrained encoder, and its train/val/test split."""

    name: Literal["ag_news", "yahoo_answers_topics"] = "ag_news"
    path: str | None = None  # ag_news: the CSV; default DATA_ROOT/ag_news/test.csv, then ../shared/data/ag_news/test.csv
    hub_id: str = "community-datasets/yahoo_answers_topics"  # yahoo_answers_topics: where on the Hub
    split_sizes: list[int] = field(default_factory=lambda: [5600, 800, 1200])  # ag_news: stratified train/val/test
    train_size: int | None = None  # yahoo: a stratified subset of the 1.4M training questions (None: all)
    val_size: int = 5000  # yahoo: carved (stratified) from the training split
    test_size: int | None = None  # yahoo: a stratified subset of the 60k test questions (None: all)
    split_seed: int = 0
    max_length: int | None = None  # tokens; None: the length_percentile of the training texts, capped at the model's
    length_percentile: float = 99.0
    group_by_length: bool = True  # batches of similar lengths (shuffled), so dynamic padding pads little
    fields: list[str] = field(default_factory=lambda: ["title", "content"])  # yahoo: of title, content, answer
    lowercase: bool = True  # yahoo: lowercase the text, as the original

    def validate(self) -> None:
        check_positive(self, "train_size", "val_size", "test_size", "max_length", prefix="data.")
        if not self.fields or len(set(self.fields)) < len(self.fields) or set(self.fields) - {"title", "content", "answer"}:
            raise ConfigError(f"data.fields: distinct names of title, content, answer, got {self.fields}")
        if len(self.split_sizes) != 3 or min(self.split_sizes) <= 0:
            raise ConfigError(f"data.split_sizes: three positive sizes train,val,test, got {self.split_sizes}")
        if not 50 <= self.length_percentile <= 100:
            raise ConfigError(f"data.length_percentile: must be in [50, 100], got {self.length_percentile}")


@dataclass
class RetrievalDataConfig:
    """Retrieval (Lab 2.3.3): AG News titles against every description (offline), or a BEIR set (online)."""

    name: Literal["ag_news", "beir"] = "ag_news"
    path: str | None = None  # ag_news: a CSV of articles (default as for lab2-finetune-agnews); beir: a BEIR folder
    hub_id: str = "BeIR/scifact"  # beir without a path: the corpus/queries set (and its -qrels set) on the Hub
    split_sizes: list[int] = field(default_factory=lambda: [5600, 800, 1200])  # ag_news: as lab2-finetune-agnews
    split_seed: int = 0
    val_corpus: Literal["split", "all"] = "split"  # ag_news: validation ranks the val articles' descriptions or all
    val_queries: int = 100  # beir: validation queries carved from the training queries
    query_length: int = 64  # tokens a query is truncated to
    doc_length: int = 256  # tokens a document is truncated to
    group_by_length: bool = True  # training batches of similar document lengths (shuffled): little padding
    baselines: bool = True  # the test pass also scores BM25 and the frozen encoder on the same queries

    def validate(self) -> None:
        check_positive(self, "val_queries", "query_length", "doc_length", prefix="data.")
        if len(self.split_sizes) != 3 or min(self.split_sizes) <= 0:
            raise ConfigError(f"data.split_sizes: three positive sizes train,val,test, got {self.split_sizes}")
        if self.name == "beir" and self.val_corpus != "split":
            raise ConfigError("data.val_corpus is for ag_news; a BEIR set's validation always ranks its whole corpus")


@dataclass
class ChoiceDataConfig:
    """Multiple choice (Lab 2.3.2): an AG News description and title options of its topic (offline), or SWAG."""

    name: Literal["ag_news", "swag"] = "ag_news"
    path: str | None = None  # ag_news: a CSV of articles
    hub_id: str = "swag"  # swag: where on the Hub (config "regular")
    split_sizes: list[int] = field(default_factory=lambda: [5600, 800, 1200])  # ag_news: as lab2-finetune-agnews
    split_seed: int = 0  # the split and the distractors
    options: int = 4  # the right title and options - 1 distractors
    val_queries: int = 2000  # swag: validation questions carved from train
    train_size: int | None = None  # swag: a subset of the 73k training questions (None: all)
    max_length: int = 128  # tokens of a text, or of a (context, option) pair
    group_by_length: bool = True  # training batches of questions of similar lengths (shuffled): little padding
    baselines: bool = True  # the test pass also scores the frozen encoder's cosine (no training)

    def validate(self) -> None:
        check_positive(self, "val_queries", "train_size", "max_length", prefix="data.")
        if len(self.split_sizes) != 3 or min(self.split_sizes) <= 0:
            raise ConfigError(f"data.split_sizes: three positive sizes train,val,test, got {self.split_sizes}")
        if not 2 <= self.options <= 16:
            raise ConfigError(f"data.options: between 2 and 16 options, got {self.options}")
        if self.name == "swag" and self.options != 4:
            raise ConfigError(f"data.options: SWAG has 4 endings per question, got {self.options}")




@dataclass
class EnvConfig:
    """The environment a reinforcement-learning agent trains in (Lab 4): a gymnasium id and its vector envs."""

    name: str = "CartPole-v1"  # any registered gymnasium id with a discrete action space (DQN) or any (policy methods)
    num_envs: int = 1  # environments stepped together (one batched policy call per step)
    continuous: bool | None = None  # passed to gymnasium.make where the env has it (CarRacing, LunarLander)
    frame_size: int = 84  # image observations: grey, resized to this square
    frame_stack: int = 4  # image observations: the last N frames are the state

    def validate(self) -> None:
        check_positive(self, "num_envs", "frame_size", "frame_stack", prefix="data.")
        if self.num_envs > 256:
            raise ConfigError(f"data.num_envs: at most 256 environments, got {self.num_envs}")


@dataclass
class RLConfig:
    """Lab 4's algorithm settings (dla.rl): REINFORCE, DQN or PPO, how long, how often it is evaluated."""

    algo: Literal["reinforce", "dqn", "ppo"] = "reinforce"
    gamma: float = 0.99  # discount, in (0, 1]
    episodes: int | None = None  # reinforce: training episodes
    total_steps: int | None = None  # dqn, ppo: training env steps
    eval_every: int = 10  # reinforce: episodes between evaluations; dqn, ppo: env steps
    eval_episodes: int = 100  # greedy episodes per evaluation (a mean over 100 decides "solved")
    test_episodes: int = 100  # the final evaluation's episodes (seeded apart from validation's)
    test_seed: int = 2_000_000  # test episode i is seeded test_seed + i (validation's: 1,000,000 + i)
    stop_when_solved: bool = False  # stop at the first evaluation whose 100-episode mean reaches the env's threshold
    # reinforce
    standardize: bool = True  # standardise each batch's returns (mean 0, std 1)
    baseline: Literal["none", "value"] = "none"  # value: a learned v(s), the policy's architecture, as a baseline
    # ppo
    n_steps: int = 128  # steps per env per rollout
    update_epochs: int = 4
    gae_lambda: float = 0.95
    clip: float = 0.2
    norm_adv: bool = True
    # reinforce (value baseline) and ppo
    value_coef: float = 0.5
    entropy_coef: float = 0.0
    # dqn
    buffer_size: int = 100_000
    learning_starts: int = 1000  # env steps before the first update
    train_freq: int = 4  # env steps (over all envs) between bursts of updates
    gradient_steps: int = 1  # updates per burst
    target_update: int = 500  # env steps between copies of the online net into the target net
    eps_start: float = 1.0
    eps_end: float = 0.05
    eps_fraction: float = 0.1  # share of total_steps over which epsilon decays linearly

    def validate(self) -> None:
        if not 0.0 < self.gamma <= 1.0:
            raise ConfigError(f"rl.gamma: must be in (0, 1], got {self.gamma}")
        check_positive(self, "episodes", "total_steps", "eval_every", "eval_episodes", "test_episodes",
                       "n_steps", "update_epochs", "buffer_size", "train_freq", "gradient_steps", "target_update",
                       prefix="rl.")
        if self.learning_starts < 0:
            raise ConfigError(f"rl.learning_starts: must be >= 0, got {self.learning_starts}")
        check_seed(self.test_seed, "rl.test_seed")
        for key in ("gae_lambda", "eps_start", "eps_end", "eps_fraction"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"rl.{key}: must be in [0, 1], got {getattr(self, key)}")
        if not 0.0 < self.clip < 1.0:
            raise ConfigError(f"rl.clip: must be in (0, 1), got {self.clip}")
        if self.value_coef < 0 or self.entropy_coef < 0:
            raise ConfigError("rl.value_coef and rl.entropy_coef: must be >= 0")
        if self.algo == "reinforce" and self.total_steps is not None:
            raise ConfigError("rl.total_steps: REINFORCE trains for a number of episodes; set rl.episodes")
        if self.algo != "reinforce" and self.episodes is not None:
            raise ConfigError(f"rl.episodes: {self.algo} trains for a number of env steps; set rl.total_steps")


@dataclass
class OptimConfig:
    # lion: the original lab's optimiser (lion-pytorch; use an lr 3-10x below AdamW's);
    # muon: Muon on the hidden 2-D weight matrices, AdamW at optim.lr on everything else
    name: Literal["sgd", "adamw", "adam", "lion", "muon"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0  # not on biases, norm gains and embeddings (see dla.train.optim)
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    betas: list[float] | None = None  # adam, adamw, lion; None: each one's default (0.9, 0.999; Lion 0.9, 0.99)
    muon_lr: float = 0.02  # muon: the lr of the hidden matrices
    muon_momentum: float = 0.95  # muon

    def validate(self) -> None:
        check_positive(self, "lr", "muon_lr", prefix="optim.")
        if self.weight_decay < 0 or not 0 <= self.momentum < 1 or not 0 <= self.muon_momentum < 1:
            raise ConfigError("optim: weight_decay must be >= 0, momentum and muon_momentum in [0, 1)")
        if self.betas is not None and (len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas)):
            raise ConfigError(f"optim.betas: two numbers in [0, 1), got {self.betas}")
        defaults = OptimConfig.__dataclass_fields__
        for key, names in OPTIM_KEYS_FOR.items():  # a setting the chosen optimiser would ignore is refused
            value = getattr(self, key)
            if self.name not in names and value != defaults[key].default:
                raise ConfigError(f"optim.{key}={value} applies to optim.name={' or '.join(names)}, not to "
                                  f"optim.name={self.name}; remove it or pick an optimiser that uses it")
        if self.nesterov and self.momentum == 0:
            raise ConfigError("optim.nesterov=true needs optim.momentum > 0")


# Which optimisers read each optimiser-specific key (muon: betas of its AdamW part)
OPTIM_KEYS_FOR = {"momentum": ("sgd",), "nesterov": ("sgd",), "betas": ("adam", "adamw", "lion", "muon"),
                  "muon_lr": ("muon",), "muon_momentum": ("muon",)}


@dataclass
class SchedConfig:
    name: Literal["none", "onecycle", "cosine", "linear"] = "none"  # linear: warm-up, then linear decay to 0 (BERT's)
    warmup_frac: float = 0.1  # share of all steps spent warming up (onecycle, cosine and linear)

    def validate(self) -> None:
        if not 0.0 <= self.warmup_frac < 1.0:
            raise ConfigError(f"sched.warmup_frac: must be in [0, 1), got {self.warmup_frac}")


@dataclass
class TrainConfig:
    epochs: int = 10  # the most epochs (early stopping may end sooner)
    max_steps: int | None = None  # language models: train for this many steps instead of epochs
    eval_every: int = 250  # language models: steps between evaluations (a "round" of the loop)
    eval_batches: int = 20  # language models: batches averaged for each train/val loss estimate
    batch_size: int = 128  # global batch: split across processes under torchrun
    eval_batch_size: int = 1024
    label_smoothing: float = 0.0
    clip_grad_norm: float | None = None
    # bf16 autocast; auto: bf16 where the hardware computes it natively (a GPU with bf16, a CPU with
    # AMX or AVX512-BF16), else fp32; a CPU without them emulates bf16, about 10x slower (dla.device)
    precision: Literal["auto", "fp32", "bf16"] = "fp32"
    channels_last: bool = False
    # torch.compile the model (a model with repeated blocks compiles one block, once: regional compilation);
    # auto: compile on a GPU, and on a CPU under bf16 autocast, the two cases where it was measured to pay
    compile: Literal["auto", True, False] = False
    # language models: windows of the test split scored for the original's last-position loss at the end,
    # a fixed random sample (LMTask.test); None: every window (each costs a forward pass of block_size tokens)
    last_pos_windows: int | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    deterministic: bool = True
    monitor: str = "val_acc"  # any val_ metric of the run's task (val_acc, val_loss, val_f1, ...)
    monitor_mode: Literal["auto", "max", "min"] = "auto"  # auto: min for a loss, max for anything else
    patience: int | None = None  # epochs (language models: evaluations) without improvement before stopping; None: never
    min_delta: float = 0.0  # the least change that counts as an improvement
    log_every: int = 50  # steps between loss checks and progress-bar updates
    grad_stats_every: int | None = None  # record per-layer gradient/weight norms every N steps (Lab 1.3)
    # train on attacks made on the fly (Lab 3.2): fgsm is the original's (no random start), fgsm_rs
    # Wong et al.'s FGSM from a random start, pgd Madry et al.'s
    adversarial: Literal["none", "fgsm", "fgsm_rs", "pgd"] = "none"
    adv_eps: float = 0.1  # L-infinity radius in pixel units (8/255 ~ 0.031 for CIFAR); the largest with uniform
    adv_prob: float = 1.0  # share of batches replaced by attacks (the original: 0.5)
    adv_eps_dist: Literal["fixed", "uniform"] = "fixed"  # uniform: each batch's eps drawn from (0, adv_eps) (the original)
    adv_alpha: float | None = None  # step; default 1.25 * eps (fgsm_rs) or 2.5 * eps / steps (pgd)
    adv_steps: int = 7  # pgd steps
    # OOD tracked during training (Lab 3.1): every N epochs, MSP and energy AUROC / FPR@95 of a fixed sample
    # (1,000 validation images, 1,000 per set) into metrics.jsonl and TensorBoard; None: off
    ood_every: int | None = None
    ood_sets: list[str] = field(default_factory=list)  # e.g. [heldout, mnist, noise-uniform]
    ood_n: int = 1000  # images per sample
    # JARN (Lab 3, exercise 3.2; dla.train.jarn): input Jacobians made to look like images by a discriminator
    jarn: bool = False
    jarn_weight: float = 1.0  # the adversarial term's weight (the paper's beta)
    jarn_disc_lr: float = 2e-4  # the discriminator's and the adaptor's Adam learning rate
    jarn_disc_width: int = 32  # the discriminator's first conv width (the paper's disc_base_channels)
    jarn_disc_layers: int = 3  # its stride-2 convs (28x28 images: 3; the paper's CIFAR-10 net: 5)
    jarn_disc_every: int = 20  # classifier steps per discriminator update (the paper's disc_update_steps)
    jarn_warmup: int = 0  # classifier steps before the adversarial term is on (the paper's steps_before_adv_opt)
    jarn_noise: float = 0.0  # uniform noise of this L-infinity size on the images whose Jacobians are taken

    def validate(self) -> None:
        check_positive(
            self, "epochs", "max_steps", "eval_every", "eval_batches", "batch_size", "eval_batch_size", "last_pos_windows", "patience", "clip_grad_norm", "log_every", "grad_stats_every",
            prefix="train.",
        )
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"train.label_smoothing: must be in [0, 1), got {self.label_smoothing}")
        check_positive(self, "adv_eps", "adv_alpha", "adv_steps", "ood_every", "ood_n", "jarn_disc_width",
                       "jarn_disc_layers", "jarn_disc_every", prefix="train.")
        if not (math.isfinite(self.jarn_weight) and self.jarn_weight > 0) or not (
                math.isfinite(self.jarn_disc_lr) and 0 < self.jarn_disc_lr <= 1):
            raise ConfigError(f"train.jarn_weight and train.jarn_disc_lr: must be > 0 (the lr at most 1), got "
                              f"{self.jarn_weight}, {self.jarn_disc_lr}")
        if self.jarn_warmup < 0 or not (math.isfinite(self.jarn_noise) and 0 <= self.jarn_noise <= 1):
            raise ConfigError(f"train.jarn_warmup >= 0 and train.jarn_noise in [0, 1], got {self.jarn_warmup}, "
                              f"{self.jarn_noise}")
        if self.ood_every and not self.ood_sets:
            raise ConfigError("train.ood_sets: give at least one OOD set with train.ood_every, e.g. train.ood_sets=[mnist]")
        if not 0.0 <= self.adv_prob <= 1.0:
            raise ConfigError(f"train.adv_prob: must be in [0, 1], got {self.adv_prob}")
        if self.adv_eps > 1:
            raise ConfigError(f"train.adv_eps: must be in (0, 1] (pixel units; 8/255 ~ 0.031), got {self.adv_eps}")
        if self.min_delta < 0:
            raise ConfigError(f"train.min_delta: must be >= 0, got {self.min_delta}")
        if not self.monitor.startswith("val_") or len(self.monitor) == 4:
            raise ConfigError(f"train.monitor: a validation metric val_NAME (e.g. val_acc, val_loss), got {self.monitor!r}")


@dataclass
class TrackConfig:
    tracker: Literal["tensorboard", "wandb", "none"] = "tensorboard"
    project: str = "dla"  # wandb project


@dataclass
class BaselineConfig:
    """Lab 2.3's frozen-feature baseline (`dla hf features-baseline`): mean-pooled encoder outputs + logistic regression."""

    c_grid: list[float] = field(default_factory=lambda: [0.01, 0.03, 0.1, 0.3, 1.0])  # C chosen on the val split
    max_iter: int = 3000


@dataclass
class DistillConfig:
    """Knowledge distillation (Lab 1, exercise 2.2 of the newer edition): Hinton et al.'s loss against a teacher."""

    teacher: str | None = None  # a finished image-classifier run on the same data (`teacher=RUN`)
    temperature: float = 4.0  # T: both nets' logits are divided by it before the softmax
    alpha: float = 0.9  # the weight of T^2 * KL(teacher || student) at T; 1 - alpha goes to the labels' cross-entropy

    def validate(self) -> None:
        if not (math.isfinite(self.temperature) and 0 < self.temperature <= 100):
            raise ConfigError(f"distill.temperature: must be in (0, 100], got {self.temperature}")
        if not (math.isfinite(self.alpha) and 0 <= self.alpha <= 1):
            raise ConfigError(f"distill.alpha: must be in [0, 1], got {self.alpha}")
        if self.teacher is not None and not self.teacher.strip():
            raise ConfigError("distill.teacher: give a run directory (teacher=runs/lab1-cnn/<run>)")


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    kind: str = IMAGE_CLASSIFIER  # the registered run kind (dla.kind): image-classifier, language-model, ...
    seed: int = 0
    runs_dir: str = "runs"
    run_name: str | None = None  # default: a timestamp
    data: Any = field(default_factory=DataConfig)  # the kind's data section (DataConfig, TextDataConfig, ...)
    model: Any = None  # the dataclass registered for model.name (see dla.models)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)  # text classifiers' frozen-feature baseline
    rl: RLConfig = field(default_factory=RLConfig)  # reinforcement-learning agents' algorithm (Lab 4)
    distill: DistillConfig = field(default_factory=DistillConfig)  # image classifiers: a teacher run (Lab 1)
    presets: dict[str, str] = field(default_factory=dict)  # which presets were applied (record only)

    def validate(self) -> None:
        check_seed(self.seed, "seed")
        check_folder_name(self.name, "name")
        if self.run_name is not None:
            check_folder_name(self.run_name, "run_name")
        if self.kind != RL_AGENT and self.rl != RLConfig():
            raise ConfigError(f"rl: the algorithm settings are for kind {RL_AGENT} runs, not {self.kind}")


# `GROUP=VALUE` shorthands for the most used keys.
ALIASES = {"data": "data.name", "tracker": "track.tracker", "model": "model.name", "teacher": "distill.teacher"}

# Keys of the former fine-tuning dialect (dla hf finetune before one engine) and where they went.
RENAMED = {
    "train.lr": "use optim.lr",
    "train.weight_decay": "use optim.weight_decay",
    "train.warmup_frac": "use sched.warmup_frac (with sched.name=linear)",
    "train.group_by_length": "use data.group_by_length",
}


def builtin_config_dir() -> Path:
    return Path(str(resources.files("dla") / "configs"))


def list_experiments() -> list[str]:
    names = {p.stem for p in builtin_config_dir().glob("*.yaml")}
    names |= {p.stem for p in Path("configs").glob("*.yaml")} if Path("configs").is_dir() else set()
    return sorted(names)


def find_experiment(name: str) -> Path:
    """A YAML path as given, else `./configs/NAME.yaml`, else the built-in `NAME.yaml`."""
    for candidate in (Path(name), Path("configs") / f"{name}.yaml", builtin_config_dir() / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"unknown experiment {name!r}; available: {', '.join(list_experiments())} (or a path to a YAML file)"
    )


def load_experiment(name: str, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Load an experiment by name or path, apply presets and `key=value` overrides, validate."""
    path = find_experiment(name)
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: an experiment file must be a mapping of sections")
    if "sweep" in raw:
        raise ConfigError(f"{name} is a sweep, not an experiment; run it with: dla sweep {name}")
    presets = raw.pop("presets", {}) or {}
    raw.setdefault("name", path.stem)
    pairs = [_split_override(o) for o in overrides]
    applied: dict[str, str] = {}
    # Presets first, whatever their position, so explicit keys always win over them.
    for key, value in pairs:
        if key in presets:
            choices = presets[key]
            if value not in choices:
                raise ConfigError(f"{key}={value}: unknown {key}; valid: {', '.join(choices)}")
            for k, v in (choices[value] or {}).items():
                _set_dotted(raw, k, v)
            applied[key] = value
    for key, value in pairs:
        if key not in presets:
            _set_dotted(raw, ALIASES.get(key, key), value)
    raw["presets"] = {**raw.get("presets", {}), **applied}
    return from_dict(raw)


def from_dict(raw: dict[str, Any]) -> ExperimentConfig:
    """Build and validate an `ExperimentConfig` from nested plain data."""
    return _build(ExperimentConfig, raw, "")


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def load_config_file(path: Path) -> ExperimentConfig:
    """Reload a resolved `config.yaml` written by a run; a damaged one raises a `ConfigError` naming it."""
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: damaged run config (expected a mapping of sections, got {_short(raw)})")
    try:
        return from_dict(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def load_run_config(run: Any) -> ExperimentConfig:
    """The resolved config of a run directory (a `RunDir` or a path to one)."""
    return load_config_file(getattr(run, "config", None) or Path(run) / "config.yaml")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _split_override(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. optim.lr=3e-3)")
    return key.strip(), value.strip()


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parts[: i + 1])} is a value, not a section; cannot set {dotted}")
        node = child
    node[parts[-1]] = value


def _model_class(raw: Any, prefix: str) -> type:
    from dla.models import MODELS

    name = raw.get("name") if isinstance(raw, dict) else None
    if name is None:
        raise ConfigError(f"{prefix}model.name is missing; valid: {', '.join(sorted(MODELS))}")
    if name not in MODELS:
        raise ConfigError(f"{prefix}model.name: {name!r} is not a model; valid: {', '.join(sorted(MODELS))}")
    return MODELS[name].config_cls


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a section (mapping), got {raw!r}")
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if f"{prefix}{key}" in RENAMED:
            raise ConfigError(f"{prefix}{key} is a key of the old fine-tuning dialect: {RENAMED[prefix + key]}")
        if key not in names:
            near = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {prefix}{near[0]}?)" if near else ""
            raise ConfigError(f"unknown key {prefix}{key}{hint}; valid keys: {', '.join(prefix + n for n in names)}")
    kwargs = {}
    if cls is ExperimentConfig:
        kwargs["kind"] = _kind(raw)
    for name in names:
        if name in kwargs:
            continue
        if name not in raw:
            if cls is ExperimentConfig and name == "model":
                raise ConfigError("the experiment has no model section; set model.name")
            continue
        key = prefix + name
        if cls is ExperimentConfig and name == "model":
            kwargs[name] = _build(_model_class(raw[name], prefix), raw[name], key + ".")
        elif cls is ExperimentConfig and name == "data":
            kwargs[name] = _build(DATA_SECTIONS[kwargs["kind"]], raw[name], key + ".")
        else:
            kwargs[name] = coerce(raw[name], hints[name], key)
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: {exc}") from None
    validate = getattr(obj, "validate", None)
    if validate:
        validate()
    return obj


def _kind(raw: dict[str, Any]) -> str:
    """The declared `kind:`, else (a config written before kinds were declared) the one `legacy_kind` infers."""
    registered()  # every kind's data section: the built-ins', those of the entry points, and any imported
    kind = raw.get("kind")
    if kind == "hf-text-classifier":
        raise ConfigError("kind: hf-text-classifier is the old fine-tuning dialect; use kind: text-classifier "
                          "(or remove it: a config without kind: is told apart by data.name)")
    if kind is None:
        return legacy_kind(raw)
    if not isinstance(kind, str) or kind not in DATA_SECTIONS:
        raise ConfigError(f"kind: {kind!r} is not a run kind; valid: {', '.join(sorted(DATA_SECTIONS))}")
    return kind


_BOOLS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert `value` (from YAML or a command-line string) to type `tp`, or raise a `ConfigError`."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if type(None) in args and (value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~"))):
            return None
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return coerce(value, rest[0], key)
        raise ConfigError(f"{key}: unsupported union type {tp}")
    if origin is Literal:
        choices = get_args(tp)
        if any(isinstance(c, bool) for c in choices) and not isinstance(value, bool):  # e.g. auto | true | false
            text = str(value).lower()
            if text in _BOOLS and not isinstance(value, float):
                return _BOOLS[text]
        if value in choices and (isinstance(value, bool) or not isinstance(value, int)):
            return value
        text = str(value).lower() if isinstance(value, bool) else str(value)
        for choice in choices:
            if text == str(choice):
                return choice
        names = (str(c).lower() if isinstance(c, bool) else str(c) for c in choices)
        raise ConfigError(f"{key}: {value!r} is not valid; choose one of {', '.join(names)}")
    if origin in (list, tuple):
        (item_tp, *_) = get_args(tp) or (Any,)
        if isinstance(value, str):
            text = value.strip()
            try:
                loaded = yaml.safe_load(text) if text.startswith("[") else [v for v in text.split(",") if v.strip()]
            except yaml.YAMLError:
                raise ConfigError(f"{key}: {value!r} is not a list (e.g. [512,256])") from None
            value = loaded
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list (e.g. [512,256]), got {value!r}")
        return [coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {str(k): str(v) for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (str, int)) and str(value).lower() in _BOOLS:
            return _BOOLS[str(value).lower()]
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                number = float(value.replace("_", ""))
            except ValueError:
                number = None
            if number is not None and number.is_integer():
                return int(number)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            result = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if not math.isfinite(result):
            raise ConfigError(f"{key}: must be a finite number, got {value!r}")
        return result
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".")
    raise ConfigError(f"{key}: unsupported field type {tp}")


def check_seed(value: int, key: str) -> None:
    """Seeds go to torch, numpy and random alike: an integer in [0, 2**32 - 1]."""
    if not 0 <= value < 2**32:
        raise ConfigError(f"{key}: must be in [0, 2**32 - 1], got {value}")


def check_folder_name(value: str, key: str) -> None:
    """Experiment, run and sweep names become one folder of the runs directory: one path component,
    not empty, without a path separator, not starting with a dot (".", "..", hidden and temporary folders)."""
    if not value or "/" in value or "\\" in value or "\0" in value or value.startswith(".") or len(value.encode()) > 255:
        raise ConfigError(f"{key}: {value!r} is not a folder name (one path component: no '/', not empty, "
                          f"not starting with '.', at most 255 bytes)")


def check_positive(obj: Any, *names: str, prefix: str = "") -> None:
    """Raise a `ConfigError` naming the first of `names` that is not > 0."""
    for name in names:
        value = getattr(obj, name)
        if value is not None and value <= 0:
            raise ConfigError(f"{prefix}{name}: must be > 0, got {value}")
