"""Evaluation: mean cross-entropy and accuracy of a classifier on one data split.

:func:`evaluate` takes any forward function and one split; under torchrun,
:func:`evaluate_distributed` evaluates one slice per rank and adds the sums, so the result is
the single-process one.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from zoo.training import distributed

if TYPE_CHECKING:
    import torch

    from zoo.data.datasets import Split
    from zoo.training.distributed import Dist

__all__ = ["evaluate", "evaluate_distributed"]


def evaluate(
    forward: Callable[[torch.Tensor], torch.Tensor],
    split: Split,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int,
    limit: int | None = None,
    channels_last: bool = False,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
) -> tuple[float, float]:
    """Mean cross-entropy (no label smoothing) and accuracy on ``split``; the caller puts
    the model in eval mode."""
    loss_sum, correct, seen = _eval_sums(
        forward,
        split,
        mean=mean,
        std=std,
        batch_size=batch_size,
        limit=limit,
        channels_last=channels_last,
        autocast=autocast,
    )
    if seen == 0:
        return math.nan, math.nan
    return loss_sum.item() / seen, correct.item() / seen


def _eval_sums(
    forward: Callable[[torch.Tensor], torch.Tensor],
    split: Split,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int,
    limit: int | None,
    channels_last: bool,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]],
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Summed cross-entropy, number correct and number of images of :func:`evaluate`: the
    one evaluation pass of zoo (:func:`zoo.data.metrics.score_split`), as ``zoo eval`` runs it."""
    from zoo.data.metrics import Sums, score_split

    sums = Sums.zeros(split.images.device)
    score_split(
        forward,
        split,
        sums,
        mean=mean,
        std=std,
        batch_size=batch_size,
        limit=limit,
        channels_last=channels_last,
        autocast=autocast,
    )
    return sums.loss_sum, sums.correct, sums.seen


def evaluate_distributed(
    model: torch.nn.Module,
    split: Split,
    place: Dist,
    device: str,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int,
    limit: int | None = None,
    channels_last: bool = False,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
) -> tuple[float, float]:
    """:func:`evaluate` under torchrun: each rank evaluates a slice of the images a single
    process would and the sums are added, so the accuracy is the single-process accuracy of
    these weights. ``model`` is the bare module, not its DDP wrapper (no gradient hooks, no
    buffer broadcasts per batch)."""
    distributed.broadcast_buffers(model)  # rank 0's BatchNorm statistics: the saved ones
    n = len(split)
    if limit is not None:
        n = min(n, limit * batch_size)
    lo, hi = distributed.eval_slice(n, place)
    mine = split.part(lo, hi)  # a streamed split (zoo.data.streamed) slices its files
    sums = _eval_sums(
        model,
        mine,
        mean=mean,
        std=std,
        batch_size=batch_size,
        limit=None,
        channels_last=channels_last,
        autocast=autocast,
    )
    loss_sum, correct, seen = distributed.all_reduce_sum(sums, device)
    if seen == 0:
        return math.nan, math.nan
    return loss_sum / seen, correct / seen
