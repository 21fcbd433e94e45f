"""The best epoch: which one it is, its weights, and early stopping.

A recipe's ``checkpoint: {keep_best, monitor}`` and ``early_stopping: {patience,
min_delta}`` are both decided here from each epoch's validation metrics. The weights of the
best epoch are kept in memory (to test and export them at the end) and, for resuming, in
``checkpoints/best.safetensors`` + ``best.json`` (:mod:`zoo.training.checkpoint`). The
tracker's counters travel in every checkpoint, so a resumed run decides exactly as an
uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

    from zoo.recipe import Recipe

__all__ = ["BestTracker"]


@dataclass
class BestTracker:
    """Best value of ``monitor`` so far (``valid_acc``: higher is better, ``valid_loss``:
    lower), its epoch and (``keep_weights``) its weights; and, with ``patience``, the epochs
    since ``monitor`` last improved by more than ``min_delta``."""

    monitor: str = "valid_acc"
    keep_weights: bool = False
    patience: int | None = None
    min_delta: float = 0.0
    best_epoch: int = 0
    best_value: float | None = None
    stop_best: float | None = None  # the reference value of early stopping
    wait: int = 0
    weights: dict[str, torch.Tensor] | None = None

    @classmethod
    def for_recipe(cls, recipe: Recipe, keep_weights: bool) -> BestTracker:
        stopping = recipe.early_stopping
        return cls(
            monitor=recipe.checkpoint.monitor,
            keep_weights=keep_weights,
            patience=stopping.patience if stopping is not None else None,
            min_delta=stopping.min_delta if stopping is not None else 0.0,
        )

    def _gain(self, value: float, reference: float) -> float:
        return value - reference if self.monitor == "valid_acc" else reference - value

    def update(self, epoch: int, metrics: Mapping[str, float], model: nn.Module) -> bool:
        """Record ``epoch``'s metrics; return whether it is the best so far (NaN never is)."""
        value = float(metrics[self.monitor])
        if not math.isfinite(value):
            improved = False
        else:
            improved = self.best_value is None or self._gain(value, self.best_value) > 0
        if improved:
            self.best_epoch, self.best_value = epoch, value
            if self.keep_weights:
                self.weights = {
                    k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()
                }
        if self.patience is not None:
            if math.isfinite(value) and (
                self.stop_best is None or self._gain(value, self.stop_best) > self.min_delta
            ):
                self.stop_best, self.wait = value, 0
            else:
                self.wait += 1
        return improved

    def stop_reason(self) -> str | None:
        """Why training should stop now (early stopping), or None."""
        if self.patience is None or self.wait < self.patience:
            return None
        best = f"{self.best_value:.4f}" if self.best_value is not None else "none"
        return (
            f"early stopping: {self.monitor} did not improve by more than {self.min_delta:g} "
            f"for {self.wait} epochs (patience {self.patience}; best {best} at epoch "
            f"{self.best_epoch})"
        )

    def state(self) -> dict[str, Any]:
        """The counters (not the weights) for a checkpoint."""
        return {
            "monitor": self.monitor,
            "best_epoch": self.best_epoch,
            "best_value": self.best_value,
            "stop_best": self.stop_best,
            "wait": self.wait,
        }

    def load(self, state: Mapping[str, Any]) -> None:
        self.best_epoch = int(state["best_epoch"])
        self.best_value = state["best_value"]
        self.stop_best = state["stop_best"]
        self.wait = int(state["wait"])
