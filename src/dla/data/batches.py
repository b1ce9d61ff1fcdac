"""Batches from in-memory uint8 tensors: shuffling, sharding across processes and batched augmentation.

No DataLoader and no worker processes: the whole data set sits on the training device and every
batch is one indexing operation, then one vectorised augmentation and one conversion to float.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F


def to_unit_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images to float32 in [0, 1]."""
    return x.float().div_(255.0)


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4, flip: bool = True) -> torch.Tensor:
    """Random crop after zero padding by `pad`, then a random horizontal flip, for a whole batch at once."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    gen_device = generator.device
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=gen_device).to(x.device)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=gen_device).to(x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channels = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    out = padded[batch, channels, rows, cols]
    if flip:
        mask = (torch.rand(n, generator=generator, device=gen_device) < 0.5).to(x.device)
        out = torch.where(mask[:, None, None, None], out.flip(3), out)
    return out


def auto_augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """torchvision's AutoAugment with the CIFAR-10 policy (Cubuk et al. 2019), a policy drawn for
    each image of a uint8 batch (N, C, H, W) on its device. torchvision draws from torch's global
    RNG: it runs under a seed drawn from `generator`, so the batches follow the run's seed and
    leave the global stream (dropout masks) as it was."""
    from torchvision.transforms import v2

    policy = v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return torch.stack([policy(image) for image in x])


def augment(x: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """`none`, `crop` (random crop after 4-pixel padding), `crop-flip` (and a horizontal flip), or
    `autoaugment` (crop-flip, then AutoAugment's CIFAR-10 policy, as in the original's CIFAR-10 runs)."""
    if kind == "none":
        return x
    out = random_crop_flip(x, generator, flip=(kind != "crop"))
    return auto_augment(out, generator) if kind == "autoaugment" else out


def train_batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
    rank: int = 0,
    world_size: int = 1,
    kind: str = "none",
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled full batches of the global size `batch_size`; each process gets its slice of each batch.

    Every process draws the same permutation from `generator`, so together they see exactly the
    batches a single process would. The last partial batch is dropped.
    """
    perm = torch.randperm(len(y), generator=generator, device=generator.device).to(y.device)
    per_rank = batch_size // world_size
    for start in range(0, len(y) - batch_size + 1, batch_size):
        idx = perm[start + rank * per_rank : start + (rank + 1) * per_rank]
        yield to_unit_float(augment(x[idx], kind, generator)), y[idx]


def eval_batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, rank: int = 0, world_size: int = 1
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This process's contiguous shard of (x, y), in order, in batches."""
    shard = torch.tensor_split(torch.arange(len(y)), world_size)[rank]
    lo, hi = (int(shard[0]), int(shard[-1]) + 1) if len(shard) else (0, 0)
    for start in range(lo, hi, batch_size):
        stop = min(start + batch_size, hi)
        yield to_unit_float(x[start:stop]), y[start:stop]


def batches_per_epoch(n: int, batch_size: int) -> int:
    return n // batch_size
