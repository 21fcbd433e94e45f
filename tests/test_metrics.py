"""zoo/data/metrics.py: the one evaluation pass, and the metrics it sums batch by batch."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from zoo.data.datasets import Split
from zoo.data.metrics import ClassTally, Sums, score_split


def _brute_force(logits: torch.Tensor, labels: torch.Tensor, k: int, bins: int) -> dict[str, Any]:
    """The metrics image by image, in float64, the textbook way."""
    probs = logits.double().softmax(1)
    conf, pred = probs.max(1)
    ece = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            gap = (pred[inside] == labels[inside]).double().mean() - conf[inside].mean()
            ece += inside.double().mean().item() * abs(gap.item())
    c = logits.shape[1]
    confusion = [[0] * c for _ in range(c)]
    for t, p in zip(labels.tolist(), pred.tolist(), strict=True):
        confusion[t][p] += 1
    top = logits.topk(k, 1).indices.tolist()
    topk = [t in row for t, row in zip(labels.tolist(), top, strict=True)]
    return {
        "loss": F.cross_entropy(logits.double(), labels).item(),
        "top1": (pred == labels).double().mean().item(),
        "topk": sum(topk) / len(topk),
        "confusion": confusion,
        "ece": ece,
    }


@pytest.mark.parametrize("batch", [7, 64, 1000])
def test_class_tally_matches_the_image_by_image_metrics(batch: int) -> None:
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 8, (300,), generator=gen)
    # informative but imperfect logits, so every metric is away from 0 and 1
    logits = torch.randn(300, 8, generator=gen) * 2 + F.one_hot(labels, 8) * 1.5
    tally = ClassTally.for_classes(8, "cpu")
    for start in range(0, 300, batch):
        tally.update(logits[start : start + batch], labels[start : start + batch])
    got, want = tally.scores(), _brute_force(logits, labels, k=5, bins=15)
    assert got.n == 300 and got.topk == 5
    assert got.confusion == want["confusion"]
    assert got.top1 == pytest.approx(want["top1"], abs=1e-12)
    assert 0.2 < got.top1 < got.topk_acc < 1
    assert got.topk_acc == pytest.approx(want["topk"], abs=1e-12)
    assert got.loss == pytest.approx(want["loss"], rel=1e-6)
    assert got.ece == pytest.approx(want["ece"], abs=1e-6) and got.ece > 0.01
    assert sum(b.count for b in got.calibration) == 300
    per_class = got.per_class()
    assert [n for n, _ in per_class] == [sum(row) for row in want["confusion"]]
    assert sum(n * acc for n, acc in per_class) / 300 == pytest.approx(got.top1)


def test_topk_is_capped_at_the_class_count_and_empty_classes_are_nan() -> None:
    tally = ClassTally.for_classes(3, "cpu")
    tally.update(torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]]), torch.tensor([0, 0]))
    scores = tally.scores()
    assert scores.topk == 3 and scores.topk_acc == 1.0 and scores.top1 == 0.5
    (n0, acc0), (n1, acc1), _ = scores.per_class()
    assert (n0, acc0, n1) == (2, 0.5, 0) and math.isnan(acc1)


def test_score_split_feeds_every_image_once_in_order() -> None:
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 2, 2)
    split = Split(images.contiguous(), torch.arange(10) % 2)
    seen: list[torch.Tensor] = []

    class Record(Sums):
        def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
            seen.append(logits[:, 0])
            super().update(logits, labels)

    sums = Record.zeros("cpu")
    forward = lambda x: torch.stack([x.mean((1, 2, 3)), -x.mean((1, 2, 3))], 1)  # noqa: E731
    score_split(forward, split, sums, mean=[0.0], std=[1 / 255], batch_size=4)
    assert sums.seen == 10 and [len(s) for s in seen] == [4, 4, 2]
    torch.testing.assert_close(torch.cat(seen), torch.arange(10.0))
    # predicted class 0 for every image: right on the 5 even labels
    assert sums.correct.item() == 5


def test_class_tally_gives_the_trainers_loss_and_accuracy_bit_for_bit() -> None:
    from zoo.training.evaluation import evaluate

    gen = torch.Generator().manual_seed(2)
    split = Split(torch.randint(0, 256, (250, 3, 4, 4), dtype=torch.uint8, generator=gen),
                  torch.randint(0, 7, (250,), generator=gen))  # fmt: skip
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 7)).eval()
    settings = {"mean": [0.5] * 3, "std": [0.25] * 3, "batch_size": 64}
    loss, acc = evaluate(model, split, **settings)
    tally = ClassTally.for_classes(7, "cpu")
    score_split(model, split, tally, **settings)
    scores = tally.scores()
    assert (scores.loss, scores.top1) == (loss, acc)  # same process: exactly equal
