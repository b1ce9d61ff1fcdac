"""Experiment tracking: TensorBoard by default, Weights & Biases optionally; metrics.jsonl is always written by the run."""

from __future__ import annotations

import importlib.util
from typing import Any

from dla.errors import ConfigError


class Tracker:
    """Receives each epoch's record; the base class drops it (tracker=none, or a non-main process)."""

    def log(self, record: dict[str, Any], step: int) -> None:
        pass

    def histogram(self, tag: str, values: Any, step: int) -> None:
        pass

    def text(self, tag: str, text: str, step: int) -> None:
        pass

    def close(self) -> None:
        pass


def _tag(key: str) -> str:
    # "train_loss" -> "loss/train", so TensorBoard overlays train and val on one chart per metric.
    if key.startswith("ood_"):  # "ood_mnist_msp_auroc" -> "ood/mnist_msp_auroc": one section for OOD tracking
        return "ood/" + key[4:]
    split, _, metric = key.partition("_")
    return f"{metric}/{split}" if split in ("train", "val", "test") and metric else key


class TensorBoardTracker(Tracker):
    def __init__(self, logdir: str, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(logdir, purge_step=purge_step)

    def log(self, record: dict[str, Any], step: int) -> None:
        for key, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("epoch", "step"):
                self.writer.add_scalar(_tag(key), value, step)
        self.writer.flush()

    def histogram(self, tag: str, values: Any, step: int) -> None:
        self.writer.add_histogram(tag, values, step)

    def text(self, tag: str, text: str, step: int) -> None:
        # Markdown in TensorBoard's text tab: indent four spaces so line breaks and spacing survive.
        self.writer.add_text(tag, "\n".join("    " + line for line in text.split("\n")), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker(Tracker):
    def __init__(self, project: str, name: str, run_dir: str, config: dict[str, Any]):
        check_tracker("wandb")
        import wandb

        # WANDB_MODE=offline is honoured by wandb itself.
        self.run = wandb.init(project=project, name=name, dir=run_dir, config=config, id=name, resume="allow")

    def log(self, record: dict[str, Any], step: int) -> None:
        self.run.log({_tag(k): v for k, v in record.items() if not isinstance(v, bool)}, step=step)

    def text(self, tag: str, text: str, step: int) -> None:
        import wandb

        self.run.log({tag: wandb.Html(f"<pre>{text}</pre>")}, step=step)

    def close(self) -> None:
        self.run.finish()


def check_tracker(kind: str) -> None:
    """Fail before any work when the chosen tracker cannot be used."""
    if kind == "wandb" and importlib.util.find_spec("wandb") is None:
        raise ConfigError("tracker=wandb needs the wandb package: pip install 'dla[wandb]' (or use tracker=tensorboard)")


def make_tracker(kind: str, run_dir: str, name: str, project: str, config: dict[str, Any], start_step: int = 0) -> Tracker:
    if kind == "tensorboard":
        return TensorBoardTracker(f"{run_dir}/tb", purge_step=start_step + 1 if start_step else None)
    if kind == "wandb":
        return WandbTracker(project, name, run_dir, config)
    return Tracker()
