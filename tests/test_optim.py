"""The optimizer and schedule: each name builds what it says, the schedule warms up and decays."""

from __future__ import annotations

from typing import Any

import pytest
from torch import nn

from zoo.recipe import Recipe, from_dict
from zoo.training.optim import build_optimizer, lr_factor


def recipe(**sections: Any) -> Recipe:
    """A valid recipe whose ``optim`` and ``schedule`` sections are replaced by ``sections``."""
    return from_dict(
        {
            "name": "tiny",
            "model": {"name": "mlp_relu"},
            "data": {"dataset": "synthetic"},
            "optim": {"name": "adam", "lr": 0.01},
            "schedule": {"name": "cosine", "warmup_epochs": 0.5},
            **sections,
        }
    )


def test_lr_factor_warmup_cosine_and_step() -> None:
    cosine = recipe(schedule={"name": "cosine", "warmup_epochs": 1, "min_lr": 0.001}).schedule
    kw = {"steps_per_epoch": 10, "total_steps": 30, "base_lr": 0.01}
    assert [lr_factor(s, cosine, **kw) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert lr_factor(10, cosine, **kw) == 1.0
    assert lr_factor(30, cosine, **kw) == pytest.approx(0.1)  # min_lr / lr
    step = recipe(schedule={"name": "step", "step_size": 2, "gamma": 0.5}).schedule
    assert [lr_factor(s, step, **kw) for s in (0, 19, 20, 40)] == [1.0, 1.0, 0.5, 0.25]
    none = recipe(schedule={"name": "none"}).schedule
    assert lr_factor(29, none, **kw) == 1.0


@pytest.mark.parametrize(
    ("name", "cls", "momentum"),
    [
        ("sgd", "SGD", 0.0),
        ("momentum", "SGD", 0.8),
        ("adam", "Adam", None),
        ("adamw", "AdamW", None),
        ("lamb", "Lamb", None),
    ],
)
def test_optimizers_behave_as_named(name: str, cls: str, momentum: float | None) -> None:
    spec = recipe(optim={"name": name, "lr": 0.1, "momentum": 0.8, "weight_decay": 0.01}).optim
    opt = build_optimizer(nn.Linear(2, 2), spec)
    assert type(opt).__name__ == cls
    group = opt.param_groups[0]
    assert group["lr"] == 0.1
    if momentum is not None:
        assert group["momentum"] == momentum
    assert max(g["weight_decay"] for g in opt.param_groups) == 0.01
