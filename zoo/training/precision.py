"""The precision a run trains in: the recipe's, or for ``precision: auto`` the fastest.

:func:`choose` resolves a new run's precision with :func:`zoo.devices.choose_precision`,
timing one training step of the run's own model (a copy, on random data: the run is not
changed) with the timings cached in ``<zoo home>/precision/``. Under torchrun rank 0 decides
and every rank takes its choice, so all train alike. The choice is logged in one line and
saved in every checkpoint and in ``summary.json``; :func:`resumed` reads it back, so a
resumed run computes in the precision it started in, on whatever machine it resumes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from zoo.devices import PrecisionChoice, choose_precision, training_step
from zoo.training import distributed
from zoo.training.checkpoint import CHECKPOINT_DIR, load_record
from zoo.training.distributed import SINGLE, Dist

if TYPE_CHECKING:
    from torch import nn

    from zoo.data.datasets import DataBundle
    from zoo.recipe import Recipe

__all__ = ["choose", "resumed"]

log = logging.getLogger(__name__)


def choose(
    recipe: Recipe,
    model: nn.Module,
    data: DataBundle,
    device: str,
    batch_size: int,
    dist: Dist = SINGLE,
) -> PrecisionChoice:
    """``recipe.precision`` on ``device``; for ``auto``, measured on ``model`` (already on
    ``device``) with batches of ``batch_size`` images shaped like ``data``'s."""
    from zoo.weights.store import home

    if recipe.precision != "auto":
        return choose_precision(recipe.precision, device)
    choice = None
    if dist.is_main:
        shape = (batch_size, data.in_chans, data.img_size, data.img_size)
        workload = {
            "model": recipe.model.name,
            "args": recipe.to_dict()["model"]["args"],
            "input": list(shape),
            "channels_last": recipe.channels_last,
        }
        choice = choose_precision(
            "auto",
            device,
            cache_dir=home() / "precision",
            step=training_step(
                model, shape, data.num_classes, device, channels_last=recipe.channels_last
            ),
            workload=workload,
        )
        log.info("%s", choice.line())
    if dist.enabled:  # one decision for all ranks: they run one model together
        shared = PrecisionChoice.from_dict(distributed.broadcast_object(_dict(choice)))
        assert shared is not None, "rank 0 broadcasts the choice it made"
        choice = shared
    assert choice is not None
    return choice


def _dict(choice: PrecisionChoice | None) -> dict[str, object] | None:
    return choice.to_dict() if choice is not None else None


def resumed(run_dir: Path, recipe: Recipe) -> PrecisionChoice:
    """The precision the run in ``run_dir`` chose when it started, from its checkpoint. A
    checkpoint from before zoo recorded it trained in the recipe's precision, which then
    could not be ``auto`` (fp32 was the default)."""
    state, _ = load_record(run_dir / CHECKPOINT_DIR)
    saved = PrecisionChoice.from_dict(state.get("precision"))
    if saved is not None:
        return PrecisionChoice(
            saved.requested, saved.chosen, f"resumed; {saved.reason}", saved.probe
        )
    if recipe.precision != "auto":
        return PrecisionChoice(recipe.precision, recipe.precision, "set explicitly")
    return PrecisionChoice(
        "auto", "fp32", "resumed from a checkpoint that does not record its precision: fp32"
    )
