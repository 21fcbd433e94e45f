"""Evaluation: mean cross-entropy and accuracy of a classifier on one data split.

:func:`evaluate` takes any forward function; :func:`evaluate_run` evaluates the model of a
training :class:`~zoo.train.Run`, under torchrun as one slice per rank whose sums are added.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from zoo import distributed

if TYPE_CHECKING:
    import torch

    from zoo.data import DataBundle, Split
    from zoo.train import Run

__all__ = ["evaluate", "evaluate_run"]


def evaluate(
    forward: Callable[[torch.Tensor], torch.Tensor],
    split: Split,
    data: DataBundle,
    *,
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
        data,
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
    data: DataBundle,
    *,
    batch_size: int,
    limit: int | None,
    channels_last: bool,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]],
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Summed cross-entropy, number correct and number of images of :func:`evaluate`."""
    import torch
    import torch.nn.functional as F

    from zoo.data import batches

    loss_sum = torch.zeros((), dtype=torch.float64, device=split.images.device)
    correct = torch.zeros((), dtype=torch.int64, device=split.images.device)
    seen = 0
    stream = batches(
        split,
        batch_size,
        shuffle=False,
        generator=None,
        augment=None,
        mean=data.mean,
        std=data.std,
        channels_last=channels_last,
    )
    with torch.no_grad():
        for x, y in itertools.islice(stream, limit):
            with autocast():
                logits = forward(x).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
    return loss_sum, correct, seen


def evaluate_run(run: Run, split: Split) -> tuple[float, float]:
    run.model.eval()
    r = run.recipe
    batch_size = r.data.eval_batch_size or r.data.batch_size
    if not run.dist.enabled:
        return evaluate(
            run.forward,
            split,
            run.data,
            batch_size=batch_size,
            limit=r.limit_eval_batches,
            channels_last=r.channels_last,
            autocast=run.autocast,
        )
    return _evaluate_distributed(run, split, batch_size)


def _evaluate_distributed(run: Run, split: Split, batch_size: int) -> tuple[float, float]:
    """Each rank evaluates a slice of the images a single process would and the sums are
    added up, so the accuracy is the single-process accuracy of these weights."""
    from zoo.data import Split

    r, place = run.recipe, run.dist
    distributed.broadcast_buffers(run.model)  # rank 0's BatchNorm statistics: the saved ones
    n = len(split)
    if r.limit_eval_batches is not None:
        n = min(n, r.limit_eval_batches * batch_size)
    lo, hi = distributed.eval_slice(n, place)
    mine = Split(split.images[lo:hi], split.labels[lo:hi])
    sums = _eval_sums(
        run.model,  # not the DDP wrapper: no gradient hooks, no buffer broadcasts per batch
        mine,
        run.data,
        batch_size=batch_size,
        limit=None,
        channels_last=r.channels_last,
        autocast=run.autocast,
    )
    loss_sum, correct, seen = distributed.all_reduce_sum(sums, run.device)
    if seen == 0:
        return math.nan, math.nan
    return loss_sum / seen, correct / seen
