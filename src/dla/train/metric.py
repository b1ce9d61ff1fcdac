"""Metric learning (the original's planned "Siamese models" exercise): a triplet loss with semi-hard mining,
retrieval metrics and few-shot classification by nearest class mean.

Written here, as the lab's own exercise, and checked in the tests against pytorch-metric-learning on the
same inputs (its `TripletMarginMiner(type_of_triplets="semihard")` with `TripletMarginLoss`, and its
`AccuracyCalculator`), as the attacks are against torchattacks:

- distances are Euclidean between L2-normalised embeddings;
- a triplet (a, p, n) has label(a) = label(p) != label(n), a != p; it is semi-hard when
  0 < d(a, n) - d(a, p) <= margin (the negative is farther than the positive, but within the margin);
- the loss is relu(d(a, p) - d(a, n) + margin), averaged over the mined triplets whose loss is not 0
  (pytorch-metric-learning's default `AvgNonZeroReducer`);
- Precision@1: the share of queries whose nearest gallery item has their class; MAP@R (Musgrave et al.,
  "A Metric Learning Reality Check", 2020): with R the number of gallery items of the query's class,
  the mean over queries of (1 / R) * sum over k <= R of P@k * [item k has the query's class].
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from dla.data.batches import batches_per_epoch, eval_batches, train_batches
from dla.device import autocast, prepare_input
from dla.train.tasks import Task


def distances(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """Euclidean distances between the L2-normalised rows of x and y (default x)."""
    x = F.normalize(x.float(), dim=1)
    y = x if y is None else F.normalize(y.float(), dim=1)
    return (2 - 2 * x @ y.T).clamp(min=0).sqrt()


def semi_hard_triplets(embeddings: torch.Tensor, labels: torch.Tensor, margin: float) -> tuple[torch.Tensor, ...]:
    """(anchors, positives, negatives) index tensors of every semi-hard triplet of a batch."""
    d = distances(embeddings)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    valid = (same & ~eye)[:, :, None] & ~same[:, None, :]  # (a, p, n)
    gap = d[:, None, :] - d[:, :, None]  # d(a, n) - d(a, p)
    a, p, n = torch.nonzero(valid & (gap > 0) & (gap <= margin), as_tuple=True)
    return a, p, n


def triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 0.2) -> tuple[torch.Tensor, int]:
    """The mean non-zero triplet loss over the batch's semi-hard triplets, and how many were mined."""
    a, p, n = semi_hard_triplets(embeddings.detach(), labels, margin)
    d = distances(embeddings)
    losses = F.relu(d[a, p] - d[a, n] + margin)
    nonzero = losses > 0
    if not bool(nonzero.any()):
        return embeddings.sum() * 0, 0
    return losses[nonzero].mean(), len(a)


@torch.inference_mode()
def retrieval_metrics(queries: torch.Tensor, query_labels: torch.Tensor, gallery: torch.Tensor,
                      gallery_labels: torch.Tensor, chunk: int = 256, exclude_self: bool = False) -> dict[str, float]:
    """Precision@1 and MAP@R of the queries against the gallery (cosine = Euclidean order on unit vectors);
    `exclude_self`: queries are the gallery itself, each one's own row left out."""
    q, g = F.normalize(queries.float(), dim=1), F.normalize(gallery.float(), dim=1)
    counts = torch.bincount(gallery_labels, minlength=int(max(gallery_labels.max(), query_labels.max())) + 1)
    r_all = counts[query_labels] - (1 if exclude_self else 0)
    r_max = int(r_all.max())
    p1 = map_r = 0.0
    for start in range(0, len(q), chunk):
        sims = q[start : start + chunk] @ g.T
        if exclude_self:
            rows = torch.arange(len(sims))
            sims[rows, rows + start] = -float("inf")
        top = sims.topk(min(r_max, sims.shape[1]), dim=1).indices
        rel = (gallery_labels[top] == query_labels[start : start + chunk, None]).double()
        r = r_all[start : start + chunk].double()
        ks = torch.arange(1, rel.shape[1] + 1, dtype=torch.float64)
        within = ks[None, :] <= r[:, None]
        precision_at_k = rel.cumsum(1) / ks
        map_r += float(((precision_at_k * rel * within).sum(1) / r.clamp(min=1)).sum())
        p1 += float(rel[:, 0].sum())
    return {"precision1": p1 / len(q), "map_r": map_r / len(q)}


def few_shot_accuracy(embeddings: torch.Tensor, labels: torch.Tensor, shots: int, episodes: int,
                      seed: int) -> float:
    """Nearest-class-mean accuracy on unseen classes: in each episode `shots` images per class (drawn with
    `seed`) give the class means, and every other image is classified by its nearest mean; the mean over
    episodes."""
    g = torch.Generator().manual_seed(seed)
    e = F.normalize(embeddings.float(), dim=1)
    classes = torch.unique(labels)
    right = total = 0
    for _ in range(episodes):
        support = torch.zeros(len(labels), dtype=torch.bool)
        means = []
        for c in classes:
            idx = torch.nonzero(labels == c).flatten()
            pick = idx[torch.randperm(len(idx), generator=g)[:shots]]
            support[pick] = True
            means.append(F.normalize(e[pick].mean(0), dim=0))
        query = ~support
        predicted = classes[(e[query] @ torch.stack(means).T).argmax(1)]
        right += int((predicted == labels[query]).sum())
        total += int(query.sum())
    return right / total


class EmbeddingTask(Task):
    """Epochs of shuffled image batches, the triplet loss with semi-hard mining; validation ranks the validation
    images against a fixed subset of training images, the test the test images against all of them."""

    metrics = ("loss", "precision1", "map_r")

    def __init__(self, data: Any, margin: float, gallery: int, unseen: Any = None, shots: tuple[int, ...] = (1, 5),
                 episodes: int = 20, seed: int = 0):
        self.data, self.margin, self.unseen, self.shots, self.episodes, self.seed = data, margin, unseen, shots, episodes, seed
        g = torch.Generator().manual_seed(seed)
        self.val_gallery = torch.randperm(len(data.train), generator=g)[:gallery]
        self.outputs: dict[str, Any] = {}  # the test's embeddings, for the kind's plots
        self.test_metrics: dict[str, float] = {}

    def total_steps(self, cfg):
        return batches_per_epoch(len(self.data.train), cfg.batch_size) * cfg.epochs

    def rounds(self, cfg):
        return cfg.epochs

    def round_steps(self, cfg, done_steps):
        return batches_per_epoch(len(self.data.train), cfg.batch_size)

    def batches(self, cfg, generator, accelerator, steps) -> Iterator[Any]:
        device = accelerator.device
        x, y = self.data.train.x.to(device), self.data.train.y.to(device)
        return train_batches(x, y, cfg.batch_size, generator, accelerator.process_index, accelerator.num_processes)

    def step(self, model, batch, cfg, unwrapped, generator):
        xb, yb = batch
        with autocast(xb.device, cfg.precision):
            emb = model(prepare_input(xb, cfg.channels_last))
        loss, mined = triplet_loss(emb.float(), yb, self.margin)
        n = torch.tensor(float(len(yb)), device=yb.device)
        return loss, {"loss": loss.detach() * n, "n": n, "triplets": torch.tensor(float(mined), device=yb.device)}

    def train_metrics(self, sums, model, accelerator, cfg):
        return {"loss": float(sums["loss"] / sums["n"]), "triplets_per_image": float(sums["triplets"] / sums["n"])}

    @torch.inference_mode()
    def embed(self, model, x: torch.Tensor, cfg) -> torch.Tensor:
        model.eval()
        device = next(model.parameters()).device
        out = []
        for xb, _ in eval_batches(x.to(device), torch.zeros(len(x), dtype=torch.long, device=device), cfg.eval_batch_size):
            with autocast(device, cfg.precision):
                out.append(model(prepare_input(xb, cfg.channels_last)).float().cpu())
        return torch.cat(out)

    def evaluate(self, model, split, accelerator, cfg):
        net = accelerator.unwrap_model(model)
        if split == "val":
            gallery = self.embed(net, self.data.train.x[self.val_gallery], cfg)
            queries = self.embed(net, self.data.val.x, cfg)
            m = retrieval_metrics(queries, self.data.val.y, gallery, self.data.train.y[self.val_gallery])
        else:
            gallery = self.embed(net, self.data.train.x, cfg)
            queries = self.embed(net, self.data.test.x, cfg)
            m = retrieval_metrics(queries, self.data.test.y, gallery, self.data.train.y)
            self.outputs = {"test": queries, "gallery": gallery}
        loss, _ = triplet_loss(queries[:1024], (self.data.val.y if split == "val" else self.data.test.y)[:1024],
                               self.margin)
        return {"loss": float(loss), **m}

    def test(self, model, accelerator, cfg):
        out = self.evaluate(model, "test", accelerator, cfg)
        if self.unseen is not None:
            net = accelerator.unwrap_model(model)
            emb = self.embed(net, self.unseen.x, cfg)
            self.outputs["unseen"] = emb
            for k in self.shots:
                out[f"fewshot{k}"] = few_shot_accuracy(emb, self.unseen.y, k, self.episodes, self.seed)
        self.test_metrics = out
        return out

    def shown(self, metrics):
        return {k: v for k, v in metrics.items() if k in ("loss", "precision1", "map_r")}
