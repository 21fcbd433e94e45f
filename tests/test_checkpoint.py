"""Checkpoints: exact round trips without pickle, and crash safety of the two-file commit."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from zoo.errors import RunError
from zoo.training import checkpoint
from zoo.training.checkpoint import (
    get_rng_state,
    join_tensors,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
    split_tensors,
)


def _same(a: object, b: object) -> bool:
    """Structural equality where tensors compare bit for bit."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return (
            type(a) is type(b)
            and len(a) == len(b)  # type: ignore[arg-type]
            and all(_same(x, y) for x, y in zip(a, b, strict=True))  # type: ignore[call-overload]
        )
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return type(a) is type(b) and a == b


def test_split_and_join_rebuild_nested_state_exactly() -> None:
    state = {
        "model": {"w": torch.randn(3, 2), "step": torch.tensor(7.0)},
        "opt": {"state": {0: {"m": torch.arange(4)}, 1: {}}, "groups": [{"betas": (0.9, 0.99)}]},
        "misc": [None, True, 3, 1.5, float("inf"), float("nan"), "s", (1, (2, 3))],
    }
    tensors: dict[str, torch.Tensor] = {}
    tree = split_tensors(state, "", tensors)
    assert set(tensors) == {"model/w", "model/step", "opt/state/0/m"}
    rebuilt = join_tensors(json.loads(json.dumps(tree)), tensors)
    assert _same(rebuilt, state)


def test_split_refuses_objects_json_cannot_hold() -> None:
    with pytest.raises(TypeError, match="cannot checkpoint set"):
        split_tensors({"x": {1, 2}}, "", {})


def _optimizer(name: str, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=0.1, weight_decay=1e-4)
    if name == "momentum":
        return torch.optim.SGD(params, lr=0.1, momentum=0.9)
    if name == "adam":
        return torch.optim.Adam(params, lr=1e-2, betas=(0.8, 0.9), weight_decay=1e-3)
    return torch.optim.AdamW(params, lr=1e-2, weight_decay=0.05)


def _step(model: nn.Module, opt: torch.optim.Optimizer, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g)
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam", "adamw"])
def test_optimizer_state_round_trip_continues_bit_identically(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    opt = _optimizer(name, list(model.parameters()))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5**step)
    for seed in range(3):
        _step(model, opt, seed)
        sched.step()
    save_checkpoint(
        tmp_path,
        {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()},
        epoch=3,
    )

    state, epoch = load_checkpoint(tmp_path)
    assert epoch == 3
    assert _same(state["opt"], opt.state_dict())
    twin = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    twin.load_state_dict(state["model"])
    twin_opt = _optimizer(name, list(twin.parameters()))
    # As the trainer does: build the scheduler first (it rewrites the lr), then load both.
    twin_sched = torch.optim.lr_scheduler.LambdaLR(twin_opt, lambda step: 0.5**step)
    twin_opt.load_state_dict(state["opt"])
    twin_sched.load_state_dict(state["sched"])
    for m, o, s in ((model, opt, sched), (twin, twin_opt, twin_sched)):
        _step(m, o, seed=99)
        s.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)
    assert twin_opt.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_rng_state_round_trip_replays_the_same_draws(tmp_path: Path) -> None:
    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    save_checkpoint(tmp_path, {"rng": get_rng_state()}, epoch=1)
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(2)
    random.seed(2)
    np.random.seed(2)
    set_rng_state(load_checkpoint(tmp_path)[0]["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert random.random() == expected[1]
    assert np.random.rand() == expected[2]


def test_checkpoint_files_are_safetensors_and_json_only(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, {"w": torch.ones(2)}, epoch=1)
    save_checkpoint(tmp_path, {"w": torch.zeros(2)}, epoch=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0002.safetensors", "last.json"]
    assert torch.equal(load_checkpoint(tmp_path)[0]["w"], torch.zeros(2))


@pytest.mark.parametrize("failing_write", ["tensors", "json"])
def test_crash_during_a_write_keeps_the_previous_checkpoint(
    failing_write: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_checkpoint(tmp_path, {"w": torch.ones(2)}, epoch=1)
    real_open = checkpoint.atomic_open

    class DiskFull(OSError):
        pass

    def failing_open(path: Path, mode: str = "wb"):  # type: ignore[no-untyped-def]
        if (failing_write == "json") == (Path(path).suffix == ".json"):
            raise DiskFull(28, "No space left on device")
        return real_open(path, mode)

    def failing_write_bytes(path: Path, data: bytes) -> None:
        with failing_open(path) as f:
            f.write(data)

    monkeypatch.setattr(checkpoint, "atomic_open", failing_open)
    monkeypatch.setattr(checkpoint, "atomic_write_bytes", failing_write_bytes)
    with pytest.raises(DiskFull):
        save_checkpoint(tmp_path, {"w": torch.full((2,), 2.0)}, epoch=2)
    monkeypatch.undo()

    state, epoch = load_checkpoint(tmp_path)
    assert epoch == 1 and torch.equal(state["w"], torch.ones(2))
    save_checkpoint(tmp_path, {"w": torch.full((2,), 3.0)}, epoch=2)  # recovers and tidies up
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0002.safetensors", "last.json"]


def test_corrupted_or_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="no complete checkpoint"):
        load_checkpoint(tmp_path)
    save_checkpoint(tmp_path, {"w": torch.ones(4)}, epoch=1)
    blob = tmp_path / "epoch-0001.safetensors"
    blob.write_bytes(blob.read_bytes()[:-3])
    with pytest.raises(RunError, match="does not match the hash"):
        load_checkpoint(tmp_path)
    (tmp_path / "last.json").write_text("{not json")
    with pytest.raises(RunError, match="unreadable"):
        load_checkpoint(tmp_path)
