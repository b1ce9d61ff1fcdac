"""What the training loop trains on: a `Task` supplies batches, the loss and the evaluation.

The loop in `dla.train.loop` runs *rounds*: a round is a number of optimiser steps followed by a
validation pass, a metrics record, early stopping and a checkpoint. For image classification and
for fine-tuning a text classifier a round is an epoch; for a language model it is
`train.eval_every` steps of random windows. Everything else (optimiser, schedule, clipping, bf16
autocast, DDP, NaN checks, resume, tracking) is shared. What a run leaves besides weights and
metrics (a language model's sample, a fine-tuned encoder's folder) its kind writes (`dla.kinds`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn

from dla.attacks import fgsm, fgsm_rs, pgd
from dla.config import TrainConfig
from dla.data.batches import batches_per_epoch, eval_batches, train_batches
from dla.data.text import TextData, bits_per_char, last_position_starts, last_position_windows, random_windows, tiled_windows
from dla.data.vision import ImageSet
from dla.device import autocast, prepare_input


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    data: ImageSet,
    accelerator: Accelerator,
    batch_size: int = 1024,
    channels_last: bool = False,
    precision: str = "fp32",
) -> dict[str, float]:
    """Mean cross-entropy and accuracy of an image classifier on `data`, sharded across processes."""
    model.eval()
    sums = torch.zeros(3, device=accelerator.device, dtype=torch.float64)
    x, y = data.x.to(accelerator.device), data.y.to(accelerator.device)
    for xb, yb in eval_batches(x, y, batch_size, accelerator.process_index, accelerator.num_processes):
        with autocast(accelerator.device, precision):
            logits = model(prepare_input(xb, channels_last))
        logits = logits.float()
        sums[0] += F.cross_entropy(logits, yb, reduction="sum")
        sums[1] += (logits.argmax(1) == yb).sum()
        sums[2] += len(yb)
    if accelerator.num_processes > 1:
        sums = accelerator.reduce(sums, reduction="sum")
    return {"loss": float(sums[0] / sums[2]), "acc": float(sums[1] / sums[2])}


class Task:
    """The interface the loop uses. `step` returns the loss and a dict of statistics (tensors) that the loop
    sums over a round and across processes, and hands to `train_metrics` (e.g. {"loss": loss * n, "n": n})."""

    unit = "epoch"  # what a round is called in progress bars and messages
    metrics: tuple[str, ...] = ("loss", "acc")  # what `evaluate` returns: train.monitor is one of val_<these>
    x_axis: str | None = None  # the record key the tracker logs against (None: the step, or the epoch)

    def attach(self, model: nn.Module) -> None:
        """The model being trained, before the first round: for a task that acts with it while it makes its
        batches (a reinforcement-learning agent collects experience with its policy)."""

    def stop_reason(self, record: dict[str, Any]) -> str | None:
        """After a round's record: why training should end now (e.g. "solved"), or None to go on."""
        return None

    def total_steps(self, cfg: TrainConfig) -> int:
        raise NotImplementedError

    def rounds(self, cfg: TrainConfig) -> int:
        raise NotImplementedError

    def round_steps(self, cfg: TrainConfig, done_steps: int) -> int:
        raise NotImplementedError

    def batches(self, cfg: TrainConfig, generator: torch.Generator, accelerator: Accelerator, steps: int) -> Iterator[Any]:
        raise NotImplementedError

    def step(self, model: nn.Module, batch: Any, cfg: TrainConfig, unwrapped: nn.Module,
             generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def train_metrics(self, sums: dict[str, torch.Tensor], model: nn.Module, accelerator: Accelerator,
                      cfg: TrainConfig) -> dict[str, float]:
        return {"loss": float(sums["loss"] / sums["n"]), "acc": float(sums["correct"] / sums["n"])}

    def state_dict(self) -> dict[str, Any]:
        """The task's own state for the resumable checkpoint (an environment's RNG, a replay buffer); none here."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""

    def evaluate(self, model: nn.Module, split: str, accelerator: Accelerator, cfg: TrainConfig) -> dict[str, float]:
        raise NotImplementedError

    def test(self, model: nn.Module, accelerator: Accelerator, cfg: TrainConfig) -> dict[str, float]:
        return self.evaluate(model, "test", accelerator, cfg)

    def summary(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        """What the task adds to summary.json."""
        return {}

    def shown(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """The part of a round's train or val metrics printed on its line (all are recorded)."""
        return metrics


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float,
                      alpha: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """Hinton et al. (2015): (1 - alpha) * CE(student, labels) + alpha * T^2 * KL(softmax(teacher / T) ||
    softmax(student / T)), the KL averaged over the batch; T^2 keeps the soft term's gradients on the scale of
    the hard one's as T changes. At alpha = 0 it is the cross-entropy."""
    ce = F.cross_entropy(student, labels, label_smoothing=label_smoothing)
    if alpha == 0:
        return ce
    t = temperature
    kl = F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1), reduction="batchmean", log_target=True)
    return (1 - alpha) * ce + alpha * t * t * kl


class ImageTask(Task):
    """Image classification: shuffled epochs over an in-memory uint8 set, cross-entropy and accuracy; with a
    teacher (a trained classifier, frozen), the distillation loss against its logits instead."""

    def __init__(self, data, augment: str = "none", teacher: nn.Module | None = None, temperature: float = 4.0,
                 alpha: float = 0.9, jarn: Any = None):
        self.data, self.augment = data, augment
        self.teacher, self.temperature, self.alpha = teacher, temperature, alpha
        self.jarn = jarn  # dla.train.jarn.Jarn: the JARN regulariser, or None

    def attach(self, model):
        device = next(model.parameters()).device
        if self.teacher is not None:
            self.teacher.to(device).eval()
        if self.jarn is not None:
            self.jarn.to(device)

    def state_dict(self):
        return {"jarn": self.jarn.state_dict()} if self.jarn is not None else {}

    def load_state_dict(self, state):
        if self.jarn is not None and "jarn" in state:
            self.jarn.load_state_dict(state["jarn"])

    def total_steps(self, cfg: TrainConfig) -> int:
        return batches_per_epoch(len(self.data.train), cfg.batch_size) * cfg.epochs

    def rounds(self, cfg: TrainConfig) -> int:
        return cfg.epochs

    def round_steps(self, cfg: TrainConfig, done_steps: int) -> int:
        return batches_per_epoch(len(self.data.train), cfg.batch_size)

    def batches(self, cfg, generator, accelerator, steps):
        device = accelerator.device
        x, y = self.data.train.x.to(device), self.data.train.y.to(device)
        rank, world = accelerator.process_index, accelerator.num_processes
        return train_batches(x, y, cfg.batch_size, generator, rank, world, self.augment)

    def step(self, model, batch, cfg, unwrapped, generator):
        xb, yb = batch
        if cfg.adversarial != "none":
            xb = adversarial_batch(unwrapped, xb, yb, cfg, generator)
        if self.jarn is not None:
            loss, logits, extra = self.jarn.loss(model, xb, yb, cfg, generator)
            logits = logits.detach()
            n = torch.tensor(float(len(yb)), device=yb.device)
            return loss, {"loss": F.cross_entropy(logits, yb) * n, "correct": (logits.argmax(1) == yb).sum().float(),
                          "n": n, **{k: v * n for k, v in extra.items() if k == "jarn_fool"}}
        with autocast(xb.device, cfg.precision):
            logits = model(prepare_input(xb, cfg.channels_last))
            if self.teacher is not None:
                with torch.no_grad():
                    soft = self.teacher(prepare_input(xb, cfg.channels_last)).float()
                loss = distillation_loss(logits.float(), soft, yb, self.temperature, self.alpha, cfg.label_smoothing)
            else:
                loss = F.cross_entropy(logits.float(), yb, label_smoothing=cfg.label_smoothing)
        logits = logits.detach().float()
        # Report plain cross-entropy, comparable with validation, even when training with smoothing.
        reported = F.cross_entropy(logits, yb) if cfg.label_smoothing or self.teacher is not None else loss.detach()
        return loss, {"loss": reported * len(yb), "correct": (logits.argmax(1) == yb).sum().to(reported.dtype),
                      "n": torch.tensor(float(len(yb)), device=yb.device)}

    def train_metrics(self, sums, model, accelerator, cfg):
        out = super().train_metrics(sums, model, accelerator, cfg)
        if "jarn_fool" in sums:  # how well the adapted Jacobians fool the discriminator (lower: more image-like)
            out["jarn_fool"] = float(sums["jarn_fool"] / sums["n"])
        return out

    def evaluate(self, model, split, accelerator, cfg):
        data = {"val": self.data.val, "test": self.data.test, "train": self.data.train}[split]
        return evaluate(model, data, accelerator, cfg.eval_batch_size, cfg.channels_last, cfg.precision)


class LMTask(Task):
    """Next-token prediction on random windows of a token stream (every position is a target).

    Train and val losses in the records are averages over a fixed set of `train.eval_batches`
    batches drawn once, so successive estimates differ only because the model changed.
    """

    unit = "round"
    metrics = ("loss", "bpc")

    def __init__(self, data: TextData, block_size: int, seed: int):
        self.data, self.block = data, block_size
        self.eval_seed = seed + 1
        self._fixed: dict[tuple[str, int, int], torch.Tensor] = {}

    def total_steps(self, cfg: TrainConfig) -> int:
        return cfg.max_steps

    def rounds(self, cfg: TrainConfig) -> int:
        return math.ceil(cfg.max_steps / cfg.eval_every)

    def round_steps(self, cfg: TrainConfig, done_steps: int) -> int:
        return min(cfg.eval_every, cfg.max_steps - done_steps)

    def batches(self, cfg, generator, accelerator, steps):
        ids = self.data.train.ids
        device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
        for _ in range(steps):
            x, y = random_windows(ids, self.block, cfg.batch_size, generator, rank, world)
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    def step(self, model, batch, cfg, unwrapped, generator):
        x, y = batch
        with autocast(x.device, cfg.precision):
            logits = model(x)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        detached = loss.detach()  # what is reported: the plain cross-entropy
        aux = getattr(unwrapped, "aux_loss", None)  # a routed model's auxiliary losses: trained on, never reported
        n = torch.tensor(float(y.numel()), device=y.device)
        return (loss + aux if aux is not None else loss), {"loss": detached * n, "n": n}

    def attach(self, model):
        counts = getattr(getattr(model, "module", model), "parameter_counts", None)
        self.param_counts = counts() if counts else None

    def train_metrics(self, sums, model, accelerator, cfg):
        return self.evaluate(model, "train", accelerator, cfg)

    def shown(self, metrics):
        """Loss and bits per char, and of the routing statistics only each MoE layer's max/mean load and each
        MoD layer's routed share."""
        return {k: v for k, v in metrics.items()
                if not k.startswith(("moe", "mod")) or k.endswith(("_max_load", "_routed_share"))}

    def summary(self, history):
        counts = getattr(self, "param_counts", None)
        if not counts or counts["active"] == counts["total"]:
            return {}
        return {"params_total": counts["total"], "params_active": counts["active"]}  # MoE: a token uses k experts

    def _windows(self, split: str, cfg: TrainConfig) -> torch.Tensor:
        """Start positions of the fixed evaluation windows of a split (the same on every call)."""
        key = (split, cfg.eval_batches, cfg.batch_size)
        if key not in self._fixed:
            ids = getattr(self.data, split).ids
            gen = torch.Generator().manual_seed(self.eval_seed + (split == "train"))
            count = cfg.eval_batches * cfg.batch_size
            self._fixed[key] = torch.randint(0, max(1, len(ids) - self.block), (count,), generator=gen)
        return self._fixed[key]

    @torch.inference_mode()
    def evaluate(self, model, split, accelerator, cfg):
        model.eval()
        ids = getattr(self.data, split).ids
        starts = self._windows(split, cfg)
        rank, world = accelerator.process_index, accelerator.num_processes
        starts = starts[rank::world]
        offsets = torch.arange(self.block + 1)
        sums = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
        inner = getattr(model, "module", model)
        routed = split == "val" and bool(getattr(inner, "moe_layers", None) or getattr(inner, "mod_layers", None))
        if routed:
            inner.track_routing()
        for i in range(0, len(starts), cfg.batch_size):
            w = ids[starts[i : i + cfg.batch_size, None] + offsets].to(accelerator.device)
            sums += self._loss_sum(model, w[:, :-1], w[:, 1:], cfg.precision)
        result = self._metrics(sums, accelerator, split)
        if routed:  # the routing statistics of this process's windows (MoE: shares, load, ...; MoD: routed share, ...)
            result.update(inner.routing_metrics())
        if split == "val" and getattr(inner, "mod_layers", None):
            # Mixture-of-Depths: the loss with training's top-k routing, which looks at future tokens (non-causal)
            inner.depth_routing("topk")
            sums.zero_()
            for i in range(0, len(starts), cfg.batch_size):
                w = ids[starts[i : i + cfg.batch_size, None] + offsets].to(accelerator.device)
                sums += self._loss_sum(model, w[:, :-1], w[:, 1:], cfg.precision)
            inner.depth_routing("causal")
            result["loss_topk_noncausal"] = self._metrics(sums, accelerator, split)["loss"]
        return result

    @torch.inference_mode()
    def test(self, model, accelerator, cfg):
        """Per-token loss over the whole test split (every token predicted once) and bits per char;
        also the original lab's score, the mean loss at the last position of every window of `block`
        tokens, with its standard error (0 when every window is scored).

        The score costs a forward pass of `block` tokens per window, so `train.last_pos_windows` can ask
        for a fixed random sample of windows instead. It is then estimated with the whole-split pass as a
        control variate: the mean, over all windows' targets, of their loss in the whole-split pass, plus
        the mean difference between the two losses of the same target on the scored windows. The two
        losses of one token are close, so the difference varies far less than the loss itself; with every
        window the estimate is the plain mean.

        Both passes run `train.eval_batch_size` tokens per forward pass (a few dozen windows: at 1,024
        windows a pass ran 1.7x slower per token on 2 cores, its activations far outside the caches), and
        eagerly: their batch shapes differ from training's, for which compiled blocks would recompile.
        The whole-split pass runs on every process (it is the cheap one); the windows are shared out.
        """
        model.eval()
        ids = self.data.test.ids
        rank, world = accelerator.process_index, accelerator.num_processes
        per_batch = max(1, cfg.eval_batch_size // self.block)
        device = accelerator.device
        with torch.compiler.set_stance("force_eager"):
            # token_loss[t - 1]: the loss of target token t (1 .. n-1) in the whole-split pass
            token_loss = torch.cat([self._token_losses(model, x.to(device), y.to(device), cfg.precision).flatten()
                                    for x, y in tiled_windows(ids, self.block, per_batch)])
            loss = float(token_loss.sum() / len(token_loss))
            result = {"loss": loss, "bpc": bits_per_char(loss, self.data.test)}
            total = max(0, len(ids) - self.block)  # windows with a next token; their targets are block .. n-1
            starts = last_position_starts(len(ids), self.block, cfg.last_pos_windows)
            diff = torch.zeros(2, dtype=torch.float64, device=device)  # sum and sum of squares of the differences
            for i, (x, y) in enumerate(last_position_windows(ids, self.block, per_batch, starts)):
                if i % world == rank:
                    rows = starts[i * per_batch : i * per_batch + len(y)]
                    x, y = x.to(device), y.to(device)
                    with autocast(x.device, cfg.precision):
                        logits = model(x, last_only=True)[:, -1]
                    d = F.cross_entropy(logits.float(), y, reduction="none").double() - token_loss[rows + self.block - 1]
                    diff += torch.stack([d.sum(), d.square().sum()])
        if world > 1:
            diff = accelerator.reduce(diff, reduction="sum")
        m = len(starts)
        if not m:  # a split shorter than one window plus its next token has no last-position score
            return result
        base = float(token_loss[self.block - 1 :].sum() / total)
        mean_d = float(diff[0]) / m
        var = max(0.0, float(diff[1]) / m - mean_d * mean_d) * m / max(1, m - 1)
        se = math.sqrt(var / m * (1 - m / total))  # sampled without replacement from `total` windows
        result.update(last_pos_loss=base + mean_d, last_pos_windows=m, last_pos_se=se)
        return result

    def _token_losses(self, model, x, y, precision) -> torch.Tensor:
        with autocast(x.device, precision):
            logits = model(x)
        return F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none").double().view(y.shape)

    def _loss_sum(self, model, x, y, precision) -> torch.Tensor:
        with autocast(x.device, precision):
            logits = model(x)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum")
        return torch.stack([loss.double(), torch.tensor(float(y.numel()), dtype=torch.float64, device=y.device)])

    def _metrics(self, sums, accelerator, split) -> dict[str, float]:
        if accelerator.num_processes > 1:
            sums = accelerator.reduce(sums, reduction="sum")
        loss = float(sums[0] / sums[1])
        return {"loss": loss, "bpc": bits_per_char(loss, getattr(self.data, split))}


class EpochTask(Task):
    """A task whose round is an epoch over `train_size()` training rows in full batches (text classifier,
    retrieval, multiple choice): the step counts, and each epoch's shuffled, length-grouped rows."""

    group = True  # batches of similar lengths

    def train_size(self) -> int:
        raise NotImplementedError

    def steps_per_epoch(self, cfg: TrainConfig) -> int:
        return self.train_size() // cfg.batch_size

    def total_steps(self, cfg: TrainConfig) -> int:
        total = self.steps_per_epoch(cfg) * cfg.epochs
        return min(total, cfg.max_steps) if cfg.max_steps else total

    def rounds(self, cfg: TrainConfig) -> int:
        return math.ceil(self.total_steps(cfg) / self.steps_per_epoch(cfg))

    def round_steps(self, cfg: TrainConfig, done_steps: int) -> int:
        return min(self.steps_per_epoch(cfg), self.total_steps(cfg) - done_steps)

    def epoch_rows(self, lengths, cfg: TrainConfig, generator, accelerator: Accelerator, steps: int) -> Iterator[Any]:
        """This process's rows of each of the first `steps` full batches of an epoch (shuffled; grouped by
        `lengths` when `self.group`); the last partial batch is dropped, so that every process gets an equal slice."""
        from dla.data.tokens import train_batches as token_batches

        rank, world = accelerator.process_index, accelerator.num_processes
        full = [b for b in token_batches(lengths, cfg.batch_size, generator, self.group) if len(b) == cfg.batch_size]
        for rows in full[:steps]:
            yield rows[rank::world]


class TextClassifierTask(EpochTask):
    """Fine-tuning a pretrained encoder for topic classification (Lab 2.3).

    Epochs of shuffled, length-grouped token batches padded per batch (dynamic padding); the last
    partial batch is dropped, as for images, so that each process gets an equal slice under DDP.
    Metrics: cross-entropy, accuracy and macro-F1, the last from a confusion matrix summed across
    processes; the confusion matrices are kept for the kind to draw.
    """

    SPLITS = ("train", "val", "test")
    metrics = ("loss", "acc", "f1")

    def __init__(self, inputs, group_by_length: bool = True):
        self.inputs, self.group = inputs, group_by_length
        self.classes = inputs.data.classes
        self.encoded = {s: inputs.encode(s) for s in self.SPLITS}
        self.labels = {s: torch.from_numpy(getattr(inputs.data, s).labels) for s in self.SPLITS}
        self.confusion: dict[str, torch.Tensor] = {}

    def train_size(self) -> int:
        return len(self.labels["train"])

    def batches(self, cfg, generator, accelerator, steps):
        enc, labels, device = self.encoded["train"], self.labels["train"], accelerator.device
        for rows in self.epoch_rows(enc.lengths, cfg, generator, accelerator, steps):
            yield enc.batch(rows, device), labels[rows].to(device)

    def step(self, model, batch, cfg, unwrapped, generator):
        enc, y = batch
        with autocast(y.device, cfg.precision):
            logits = model(**enc).logits
        loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
        logits = logits.detach().float()
        reported = F.cross_entropy(logits, y) if cfg.label_smoothing else loss.detach()
        return loss, {"loss": reported * len(y), "correct": (logits.argmax(1) == y).sum().to(reported.dtype),
                      "n": torch.tensor(float(len(y)), device=y.device),
                      "tokens": enc["attention_mask"].sum().to(reported.dtype)}

    def train_metrics(self, sums, model, accelerator, cfg):
        return {**super().train_metrics(sums, model, accelerator, cfg), "tokens": int(sums["tokens"])}

    @torch.inference_mode()
    def evaluate(self, model, split, accelerator, cfg):
        from dla.data.tokens import length_sorted

        model.eval()
        enc, labels, k = self.encoded[split], self.labels[split], len(self.classes)
        device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
        sums = torch.zeros(1 + k * k, dtype=torch.float64, device=device)  # loss sum, then the confusion counts
        for i, rows in enumerate(length_sorted(enc.lengths, cfg.eval_batch_size)):
            if i % world != rank:
                continue
            y = labels[rows].to(device)
            with autocast(device, cfg.precision):
                logits = model(**enc.batch(rows, device)).logits.float()
            sums[0] += F.cross_entropy(logits, y, reduction="sum")
            sums[1:] += torch.bincount(y * k + logits.argmax(1), minlength=k * k)
        if world > 1:
            sums = accelerator.reduce(sums, reduction="sum")
        confusion = sums[1:].view(k, k).cpu()  # rows: true class, columns: predicted
        self.confusion[split] = confusion
        return {"loss": float(sums[0] / confusion.sum()), "acc": float(confusion.trace() / confusion.sum()),
                "f1": macro_f1(confusion)}

    def summary(self, history):
        seconds = sum(r["steps_time_s"] for r in history)
        tokens = sum(r["train_tokens"] for r in history)
        inputs = self.inputs
        return {"classes": list(self.classes), "splits": inputs.data.describe(), "data_files": inputs.data.extra,
                "max_length": inputs.max_length, "token_lengths": inputs.lengths,
                "train_tokens": tokens, "train_tokens_per_s": tokens / seconds if seconds else None}


def macro_f1(confusion: torch.Tensor) -> float:
    """Macro-averaged F1 of a confusion matrix (rows true, columns predicted); a class never true nor predicted scores 0."""
    tp = confusion.diag()
    denominator = confusion.sum(0) + confusion.sum(1)  # 2 tp + fp + fn
    f1 = torch.where(denominator > 0, 2 * tp / denominator.clamp(min=1), torch.zeros_like(tp))
    return float(f1.mean())


def adversarial_batch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, generator) -> torch.Tensor:
    """Replace a batch, with probability `adv_prob`, by attacks on the current model (FGSM, FGSM
    from a random start, or PGD) at `adv_eps`, or at an eps drawn from U(0, adv_eps) per batch.
    The draws come from the run's generator (saved with every checkpoint, the same on every
    process); with adv_prob 0 nothing is drawn, so training is the standard one."""
    if cfg.adv_prob == 0:
        return x
    dev = generator.device
    if cfg.adv_prob < 1 and float(torch.rand(1, generator=generator, device=dev)) >= cfg.adv_prob:
        return x
    eps = cfg.adv_eps
    if cfg.adv_eps_dist == "uniform":
        eps = cfg.adv_eps * float(torch.rand(1, generator=generator, device=dev))
        if eps == 0:
            return x
    with autocast(x.device, cfg.precision):
        if cfg.adversarial == "fgsm":
            return fgsm(model, x, y, eps)
        if cfg.adversarial == "fgsm_rs":
            return fgsm_rs(model, x, y, eps, cfg.adv_alpha, generator=generator)
        return pgd(model, x, y, eps, cfg.adv_alpha, cfg.adv_steps, generator=generator)
