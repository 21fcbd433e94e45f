"""Scoring a classifier on a split: one pass of :func:`~zoo.data.datasets.batches`, metrics
summed batch by batch.

:func:`score_split` is the one evaluation loop of zoo. The trainer's validation and test
evaluation (:mod:`zoo.training.evaluation`, with a :class:`Sums` tally) and ``zoo eval``
(:mod:`zoo.analysis.evaluate`, with a :class:`ClassTally`) both run it, so for the same weights,
split, normalisation and batch size they see the same batches and the same logits, and their
loss and accuracy are the same numbers. It lives in ``data`` (level 1) because both users sit
on level 3 in parts that may not import each other; it needs only the split and the batches.

A :class:`ClassTally` adds, in the same pass: top-k accuracy, the confusion matrix (hence
per-class accuracy) and the calibration bins of the expected calibration error (ECE, Guo et
al. 2017, https://arxiv.org/abs/1706.04599): the top-1 confidence of each image falls into one
of ``bins`` equal-width bins over (0, 1]; ECE is the image-weighted mean of
``|accuracy - mean confidence|`` over the bins. Nothing per image is kept.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from zoo.data.datasets import Split

__all__ = [
    "ECE_BINS",
    "CalibrationBin",
    "ClassScores",
    "ClassTally",
    "Sums",
    "Tally",
    "score_split",
]

ECE_BINS = 15  # as Guo et al. and most calibration papers report it


class Tally(Protocol):
    """What :func:`score_split` feeds each batch's float32 logits and labels to."""

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None: ...


@dataclass
class Sums:
    """Summed cross-entropy (float64, no label smoothing), number correct and images seen:
    what the trainer's evaluation needs. Sums stay on the split's device (no sync per batch)."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    seen: int = 0

    @classmethod
    def zeros(cls, device: torch.device | str) -> Sums:
        import torch

        return cls(
            loss_sum=torch.zeros((), dtype=torch.float64, device=device),
            correct=torch.zeros((), dtype=torch.int64, device=device),
        )

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        import torch.nn.functional as F

        self.loss_sum += F.cross_entropy(logits, labels, reduction="sum")
        self.correct += (logits.argmax(1) == labels).sum()
        self.seen += len(labels)


@dataclass
class ClassTally(Sums):
    """:class:`Sums` plus top-k hits, the confusion matrix (rows: true class, columns:
    predicted) and calibration bins. Build it with :meth:`for_classes`."""

    num_classes: int = 0
    topk: int = 5
    topk_correct: torch.Tensor | None = None
    confusion: torch.Tensor | None = None  # (C, C) int64
    bin_count: torch.Tensor | None = None  # (bins,) float64
    bin_confidence: torch.Tensor | None = None  # summed top-1 probability per bin
    bin_correct: torch.Tensor | None = None  # summed top-1 hits per bin
    bins: int = ECE_BINS

    @classmethod
    def for_classes(
        cls, num_classes: int, device: torch.device | str, *, topk: int = 5, bins: int = ECE_BINS
    ) -> ClassTally:
        """A zeroed tally for a ``num_classes`` classifier; ``topk`` is capped at the class
        count (top-5 of a 3-class model is top-3, as timm's validate does)."""
        import torch

        base = Sums.zeros(device)
        zeros = torch.zeros(bins, dtype=torch.float64, device=device)
        return cls(
            loss_sum=base.loss_sum,
            correct=base.correct,
            num_classes=num_classes,
            topk=min(topk, num_classes),
            topk_correct=torch.zeros((), dtype=torch.int64, device=device),
            confusion=torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device),
            bin_count=zeros.clone(),
            bin_confidence=zeros.clone(),
            bin_correct=zeros,
            bins=bins,
        )

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        import torch
        import torch.nn.functional as F

        assert self.confusion is not None and self.topk_correct is not None  # for_classes
        assert self.bin_count is not None and self.bin_confidence is not None
        assert self.bin_correct is not None
        # F.cross_entropy is nll_loss(log_softmax): the same loss as Sums, bit for bit, with
        # the log-probabilities kept for the confidences.
        log_probs = F.log_softmax(logits, 1)
        self.loss_sum += F.nll_loss(log_probs, labels, reduction="sum")
        pred = logits.argmax(1)  # as Sums: ties resolve the same way
        hit = pred == labels
        self.correct += hit.sum()
        self.seen += len(labels)
        c = self.num_classes
        top = logits.topk(self.topk, dim=1).indices
        self.topk_correct += (top == labels[:, None]).any(1).sum()
        self.confusion += torch.bincount(labels * c + pred, minlength=c * c).view(c, c)
        confidence = log_probs.gather(1, pred[:, None]).squeeze(1).double().exp()
        # bin b holds confidences in (b / bins, (b + 1) / bins]
        which = (confidence * self.bins).ceil().long().clamp_(1, self.bins) - 1
        self.bin_count += torch.bincount(which, minlength=self.bins)
        self.bin_confidence += torch.bincount(which, confidence, minlength=self.bins)
        self.bin_correct += torch.bincount(which, hit.double(), minlength=self.bins)

    def scores(self) -> ClassScores:
        """The tally as plain Python numbers (one device sync)."""
        assert self.confusion is not None and self.topk_correct is not None
        assert self.bin_count is not None and self.bin_confidence is not None
        assert self.bin_correct is not None
        n = self.seen
        confusion = self.confusion.cpu().tolist()
        count = self.bin_count.cpu().tolist()
        conf = self.bin_confidence.cpu().tolist()
        hits = self.bin_correct.cpu().tolist()
        bins = [
            CalibrationBin(
                lower=b / self.bins,
                upper=(b + 1) / self.bins,
                count=int(count[b]),
                confidence=conf[b] / count[b] if count[b] else math.nan,
                accuracy=hits[b] / count[b] if count[b] else math.nan,
            )
            for b in range(self.bins)
        ]
        ece = sum(abs(hits[b] - conf[b]) for b in range(self.bins)) / n if n else math.nan
        return ClassScores(
            n=n,
            loss=self.loss_sum.item() / n if n else math.nan,
            top1=self.correct.item() / n if n else math.nan,
            topk=self.topk,
            topk_acc=self.topk_correct.item() / n if n else math.nan,
            confusion=confusion,
            calibration=bins,
            ece=ece,
        )


@dataclass(frozen=True)
class CalibrationBin:
    lower: float
    upper: float
    count: int
    confidence: float  # mean top-1 probability of the images in the bin (NaN when empty)
    accuracy: float  # fraction of them classified correctly (NaN when empty)


@dataclass(frozen=True)
class ClassScores:
    """Everything :class:`ClassTally` measured, as plain numbers (fractions, not percent)."""

    n: int
    loss: float
    top1: float
    topk: int  # the k of topk_acc: 5, or the class count when smaller
    topk_acc: float
    confusion: list[list[int]]  # [true][predicted]
    calibration: list[CalibrationBin] = field(default_factory=list)
    ece: float = math.nan

    def per_class(self) -> list[tuple[int, float]]:
        """(images, accuracy) per true class; accuracy is NaN for a class with no images."""
        rows = []
        for c, row in enumerate(self.confusion):
            total = sum(row)
            rows.append((total, row[c] / total if total else math.nan))
        return rows


def score_split(
    forward: Callable[[torch.Tensor], torch.Tensor],
    split: Split,
    tally: Tally,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int,
    limit: int | None = None,
    channels_last: bool = False,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
) -> None:
    """Feed ``tally`` the float32 logits of every batch of ``split`` (in order, normalised
    with ``mean``/``std``, no augmentation; at most ``limit`` batches). The caller puts the
    model in eval mode."""
    import torch

    from zoo.data.datasets import batches

    stream = batches(
        split,
        batch_size,
        shuffle=False,
        generator=None,
        augment=None,
        mean=mean,
        std=std,
        channels_last=channels_last,
    )
    with torch.no_grad():
        for x, y in itertools.islice(stream, limit):
            with autocast():
                logits = forward(x).float()
            tally.update(logits, y)
