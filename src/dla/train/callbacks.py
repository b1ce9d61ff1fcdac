"""Training callbacks: early stopping, and the hook protocol the loop calls."""

from __future__ import annotations

from typing import Any


class Callback:
    """Hooks the training loop calls; override what you need."""

    def on_fit_start(self, run: Any, tracker: Any, model: Any, step: int) -> None:
        """Before the first epoch (`step` > 0 when resuming)."""

    def on_fit_end(self) -> None:
        """After the last epoch, also when training fails."""

    def on_step_end(self, step: int, model: Any) -> None:
        """After each optimiser step (`step` counts from 1)."""

    def epoch_metrics(self, epoch: int, model: Any) -> dict[str, float]:
        """Extra metrics for this epoch's record, merged in before it is written, logged and checkpointed."""
        return {}

    def on_epoch_end(self, record: dict[str, Any], model: Any) -> None:
        """After each epoch's record is written and the checkpoint saved."""


class EarlyStopping:
    """Stop after `patience` epochs without an improvement of at least `min_delta` in `monitor`."""

    def __init__(self, monitor: str, patience: int | None, min_delta: float = 0.0, mode: str = "auto"):
        self.monitor = monitor
        self.mode = mode if mode != "auto" else "min" if monitor.endswith("loss") else "max"
        self.patience = patience
        self.min_delta = min_delta
        self.best: float | None = None
        self.best_epoch = 0
        self.bad_epochs = 0

    def update(self, value: float, epoch: int) -> bool:
        """Record this epoch's value; True when it is a new best."""
        if self.best is None:
            improved = True
        elif self.mode == "max":
            improved = value > self.best + self.min_delta
        else:
            improved = value < self.best - self.min_delta
        if improved:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
        else:
            self.bad_epochs += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch, self.bad_epochs = state["best"], state["best_epoch"], state["bad_epochs"]
