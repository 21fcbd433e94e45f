"""The optimizer and schedule: each name builds what it says, the schedule warms up and decays."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

from zoo.devices import fused_optimizer
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


@pytest.mark.parametrize(("name", "fused"), [("sgd", None), ("momentum", True), ("adam", True)])
def test_cpu_optimizers_use_the_fused_kernel_where_it_is_faster(name: str, fused: Any) -> None:
    spec = recipe(optim={"name": name, "lr": 0.1, "momentum": 0.8}).optim
    assert build_optimizer(nn.Linear(2, 2), spec).param_groups[0]["fused"] is fused


def test_fused_matches_the_default_step_and_parameters_without_a_kernel_fall_back() -> None:
    torch.manual_seed(0)
    model, x = nn.Linear(6, 3), torch.randn(8, 6)
    plain = nn.Linear(6, 3)
    plain.load_state_dict(model.state_dict())
    fused = fused_optimizer(torch.optim.Adam, model.parameters(), lr=0.01, weight_decay=0.1)
    default = torch.optim.Adam(plain.parameters(), lr=0.01, weight_decay=0.1)
    for _ in range(5):
        for net, opt in ((model, fused), (plain, default)):
            opt.zero_grad()
            net(x).square().sum().backward()
            opt.step()
    torch.testing.assert_close(model.weight, plain.weight)  # another kernel: ulps, not bits
    ints = fused_optimizer(torch.optim.SGD, [torch.zeros(2, dtype=torch.int64)], lr=0.1)
    assert ints.param_groups[0]["fused"] is None


def test_an_older_runs_non_fused_adam_state_resumes_into_the_fused_optimizer() -> None:
    # Runs saved before training went fused hold torch's default Adam state ("fused": None),
    # which torch's load_state_dict would copy into the groups, switching the kernel off.
    torch.manual_seed(0)
    spec = recipe(optim={"name": "adam", "lr": 0.01}).optim
    model, x = nn.Linear(6, 3), torch.randn(8, 6)
    old = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(3):
        old.zero_grad()
        model(x).square().sum().backward()
        old.step()
    saved = copy.deepcopy(old.state_dict())
    assert saved["param_groups"][0]["fused"] is None
    twin = copy.deepcopy(model)
    resumed = build_optimizer(model, spec)
    resumed.load_state_dict(copy.deepcopy(saved))
    assert [g["fused"] for g in resumed.param_groups] == [True]
    continued = torch.optim.Adam(twin.parameters(), lr=0.01)
    continued.load_state_dict(saved)
    for net, opt in ((model, resumed), (twin, continued)):
        opt.zero_grad()
        net(x).square().sum().backward()
        opt.step()
    assert float(resumed.state[model.weight]["step"]) == 4.0
    torch.testing.assert_close(model.weight, twin.weight)
    again = build_optimizer(copy.deepcopy(model), spec)  # its own state round-trips exactly
    again.load_state_dict(copy.deepcopy(resumed.state_dict()))
    assert [g["fused"] for g in again.param_groups] == [True]
