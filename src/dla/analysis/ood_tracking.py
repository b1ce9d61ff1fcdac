"""OOD detection tracked during training: `train.ood_every=N train.ood_sets=[...]`.

Every N epochs the callback scores a fixed sample, `train.ood_n` validation images (ID) and as many
per OOD set, with MSP and energy, and adds `ood_<set>_<detector>_auroc` and `..._fpr95` to the
epoch's record: metrics.jsonl and TensorBoard (section "ood") get them, and `dla report` plots them
against the epoch. The sample is drawn once, before the first epoch, with the run's seed, so every
point of the curve scores the same images. Groups (near, far) expand to their sets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dla.analysis import ood
from dla.data.batches import to_unit_float
from dla.data.ood import check_set_names, expand_groups, grouped_set_images, sample, user_set_label
from dla.errors import ConfigError, DlaError
from dla.train.callbacks import Callback

TRACKED = {"msp": ood.msp, "energy": ood.energy}


def check_ood_tracking(cfg) -> None:
    """Before any work: OOD sets valid for the data of an image classifier (the kind that tracks OOD)."""
    if not cfg.train.ood_every:
        return
    try:
        check_set_names(cfg, list(cfg.train.ood_sets), option="train.ood_sets")
    except DlaError as exc:
        raise ConfigError(str(exc)) from None


class OODTracking(Callback):
    """MSP and energy AUROC / FPR@95 of a fixed ID and OOD sample every `every` epochs."""

    def __init__(self, every: int, x_id: torch.Tensor, sets: dict[str, torch.Tensor]):
        self.every, self.x_id, self.sets = every, x_id, sets

    @classmethod
    def for_run(cls, cfg, data, data_root: Path | None) -> "OODTracking":
        n, seed = cfg.train.ood_n, cfg.seed
        x_id = to_unit_float(sample(data.val if len(data.val) else data.test, n, seed).x)
        sets = {}
        for name, group in expand_groups(cfg, list(cfg.train.ood_sets)):
            x = grouped_set_images(name, group, cfg, data_root, n, seed)
            if x is not None:
                sets[user_set_label(name)] = x
        return cls(cfg.train.ood_every, x_id, sets)

    @torch.no_grad()
    def epoch_metrics(self, epoch: int, model: Any) -> dict[str, float]:
        if epoch % self.every:
            return {}
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        try:
            logits_id = ood.logits_of(model, self.x_id.to(device)).cpu()
            out = {}
            for name, x in self.sets.items():
                logits = ood.logits_of(model, x.to(device)).cpu()
                for det, score in TRACKED.items():
                    m = ood.ood_metrics(score(logits_id), score(logits))
                    out[f"ood_{name}_{det}_auroc"] = round(m["auroc"], 6)
                    out[f"ood_{name}_{det}_fpr95"] = round(m["fpr95"], 6)
        finally:
            model.train(was_training)
        return out
