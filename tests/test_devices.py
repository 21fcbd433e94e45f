"""``precision: auto`` (zoo.devices.choose_precision): what it picks, when it measures, and
that its cache on disk can only save a probe, never steer or break a run.

The timings are faked (``_time_pair`` returns the speedups a test names): which precision a
machine's CPU favours is not the test's business, the decision rule is.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import zoo.devices
from zoo.devices import (
    AUTO_SPEEDUP,
    PRECISION_ENV,
    PrecisionChoice,
    check_precision,
    choose_precision,
    training_step,
)
from zoo.errors import RecipeError


@pytest.fixture(autouse=True)
def _measure_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    """conftest pins auto to fp32 through $ZOO_PRECISION; these tests are about auto."""
    monkeypatch.delenv(PRECISION_ENV, raising=False)


class FakeTimer:
    """Stands in for ``zoo.devices._time_pair``: bf16 is ``matmul`` times as fast as fp32 in
    the matmul probe and ``step`` times in a model's step; records what it was asked to time."""

    def __init__(self, matmul: float, step: float) -> None:
        self.speedups = {"matmul": matmul, "step": step}
        self.timed: list[str] = []

    def __call__(self, step: Callable[[str], None], reps: int) -> dict[str, Any]:
        what = "step" if getattr(step, "is_model_step", False) else "matmul"
        self.timed.append(what)
        return {"fp32_s": 1.0, "bf16_s": 1.0 / self.speedups[what], "speedup": self.speedups[what]}


def model_step(precision: str) -> None:
    """What choose_precision would call to time the model (never called: the timer is fake)."""


model_step.is_model_step = True  # type: ignore[attr-defined]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[float, float], FakeTimer]]:
    def install(matmul: float, step: float) -> FakeTimer:
        timer = FakeTimer(matmul, step)
        monkeypatch.setattr(zoo.devices, "_time_pair", timer)
        return timer

    yield install


def auto(cache: Path | None, workload: str = "mlp_relu") -> PrecisionChoice:
    return choose_precision(
        "auto", "cpu", cache_dir=cache, step=model_step, workload={"model": workload}
    )


# -- the decision --------------------------------------------------------------------------


def test_auto_picks_bf16_where_the_training_step_is_faster(
    fake: Callable[[float, float], FakeTimer], tmp_path: Path
) -> None:
    timer = fake(2.1, 1.9)  # the AMD EPYC with avx512_bf16: matmul 2.1x, Mixer 1.92x
    choice = auto(tmp_path)
    assert (choice.requested, choice.chosen) == ("auto", "bf16")
    assert "training step of this model runs 1.90x as fast as fp32" in choice.reason
    assert choice.probe == {"matmul_speedup": 2.1, "step_speedup": 1.9, "cached": False}
    assert timer.timed == ["matmul", "step"]
    assert choice.line().startswith("precision auto -> bf16: ")


def test_auto_picks_fp32_where_bf16_is_slower_without_timing_the_model(
    fake: Callable[[float, float], FakeTimer], tmp_path: Path
) -> None:
    timer = fake(0.02, 5.0)  # avx2 only: bf16 emulated, ~50x slower
    choice = auto(tmp_path)
    assert choice.chosen == "fp32"
    assert "bf16 matmul runs 0.02x as fast as fp32" in choice.reason
    assert timer.timed == ["matmul"]  # a bf16 step of a big model would take seconds here


@pytest.mark.parametrize(
    ("step", "chosen"),
    [(AUTO_SPEEDUP, "bf16"), (AUTO_SPEEDUP - 0.01, "fp32"), (1.0, "fp32"), (0.7, "fp32")],
)
def test_auto_needs_the_step_at_least_1_2x_faster(
    fake: Callable[[float, float], FakeTimer], step: float, chosen: str
) -> None:
    fake(2.0, step)
    assert auto(None).chosen == chosen
    assert AUTO_SPEEDUP == 1.2


def test_a_fast_matmul_alone_does_not_pick_bf16_for_a_model_that_is_not(
    fake: Callable[[float, float], FakeTimer],
) -> None:
    fake(2.0, 1.1)
    assert auto(None).chosen == "fp32"
    fake(2.0, 1.0)  # without a model to time, the matmul decides
    assert choose_precision("auto", "cpu").chosen == "bf16"


def test_explicit_precisions_are_kept_without_measuring(
    fake: Callable[[float, float], FakeTimer],
) -> None:
    timer = fake(0.02, 0.02)
    for precision in ("fp32", "bf16"):
        choice = choose_precision(precision, "cpu", step=model_step)
        assert (choice.requested, choice.chosen) == (precision, precision)
    assert timer.timed == []
    with pytest.raises(RecipeError, match="fp16 needs a CUDA device"):
        choose_precision("fp16", "cpu")
    with pytest.raises(RecipeError, match="unknown precision 'fp8'"):
        choose_precision("fp8", "cpu")


def test_zoo_precision_decides_auto_without_measuring(
    fake: Callable[[float, float], FakeTimer], monkeypatch: pytest.MonkeyPatch
) -> None:
    timer = fake(2.0, 2.0)
    monkeypatch.setenv(PRECISION_ENV, "fp32")
    choice = auto(None)
    assert (choice.chosen, choice.reason) == ("fp32", "$ZOO_PRECISION=fp32")
    monkeypatch.setenv(PRECISION_ENV, "bf16")
    assert auto(None).chosen == "bf16"
    assert timer.timed == []
    monkeypatch.setenv(PRECISION_ENV, "fp8")
    with pytest.raises(RecipeError, match=r"\$ZOO_PRECISION is 'fp8'; set it to one of fp32"):
        auto(None)
    with pytest.raises(RecipeError, match=r"\$ZOO_PRECISION is 'fp8'"):
        check_precision("auto", "cpu")  # refused before any data is loaded
    monkeypatch.setenv(PRECISION_ENV, "fp16")
    with pytest.raises(RecipeError, match="fp16 needs a CUDA device"):
        auto(None)


@pytest.mark.parametrize(("supported", "chosen"), [(True, "bf16"), (False, "fp32")])
def test_auto_on_cuda_follows_bf16_support_without_measuring(
    fake: Callable[[float, float], FakeTimer],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    supported: bool,
    chosen: str,
) -> None:
    timer = fake(0.5, 0.5)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
    monkeypatch.setattr(zoo.devices, "device_name", lambda device: "NVIDIA H200")
    choice = choose_precision("auto", "cuda:0", cache_dir=tmp_path, step=model_step)
    assert choice.chosen == chosen
    assert "NVIDIA H200" in choice.reason
    assert timer.timed == [] and not list(tmp_path.iterdir())


def test_auto_elsewhere_is_fp32(fake: Callable[[float, float], FakeTimer]) -> None:
    fake(2.0, 2.0)
    assert choose_precision("auto", "mps", step=model_step).chosen == "fp32"


def test_a_model_that_fails_in_bf16_trains_in_fp32(
    fake: Callable[[float, float], FakeTimer], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake(2.0, 2.0)

    def broken(step: Callable[[str], None], reps: int) -> dict[str, Any]:
        if getattr(step, "is_model_step", False):
            raise RuntimeError('"addmm" not implemented for BFloat16')
        return {"fp32_s": 1.0, "bf16_s": 0.5, "speedup": 2.0}

    monkeypatch.setattr(zoo.devices, "_time_pair", broken)
    choice = auto(None)
    assert choice.chosen == "fp32" and "not implemented for BFloat16" in choice.reason


def test_real_timing_sees_a_faster_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """_time_pair itself, with steps that sleep: bf16 4x as fast is chosen, 1x is not."""

    def sleeper(fp32_s: float, bf16_s: float) -> Callable[[str], None]:
        def step(precision: str) -> None:
            time.sleep(fp32_s if precision == "fp32" else bf16_s)

        return step

    monkeypatch.setattr(zoo.devices, "_matmul_step", lambda: sleeper(0.02, 0.005))
    assert choose_precision("auto", "cpu", step=sleeper(0.02, 0.005)).chosen == "bf16"
    assert choose_precision("auto", "cpu", step=sleeper(0.01, 0.01)).chosen == "fp32"


# -- the cache -----------------------------------------------------------------------------


def test_the_cache_makes_the_second_choice_free(
    fake: Callable[[float, float], FakeTimer], tmp_path: Path
) -> None:
    timer = fake(2.0, 1.5)
    first = auto(tmp_path)
    second = auto(tmp_path)
    assert timer.timed == ["matmul", "step"]  # nothing timed the second time
    assert second.chosen == first.chosen == "bf16"
    assert second.probe["cached"] is True and second.reason.endswith("; cached)")
    auto(tmp_path, workload="mlpmixer_p4")  # another model: only its step is timed
    assert timer.timed == ["matmul", "step", "step"]
    (cache,) = tmp_path.iterdir()
    record = json.loads(cache.read_text())
    assert record["key"]["device_name"] == zoo.devices.device_name("cpu")
    assert record["key"]["torch"] == torch.__version__
    assert len(record["steps"]) == 2


def test_the_cache_is_keyed_by_cpu_model(
    fake: Callable[[float, float], FakeTimer], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    timer = fake(0.1, 0.1)
    auto(tmp_path)
    monkeypatch.setattr(zoo.devices, "device_name", lambda device: "Intel Xeon 8480+ (AMX)")
    timer.speedups = {"matmul": 2.0, "step": 1.8}
    assert auto(tmp_path).chosen == "bf16"  # a new machine measures for itself
    assert timer.timed == ["matmul", "matmul", "step"]
    assert len(list(tmp_path.iterdir())) == 2


def _only_cache(cache_dir: Path) -> Path:
    (path,) = [p for p in cache_dir.iterdir() if p.name != "elsewhere"]
    return path


@pytest.mark.parametrize(
    "damage",
    ["garbage", "truncated", "list", "nan", "other key", "huge", "symlink", "fifo", "directory"],
)
def test_a_damaged_or_hostile_cache_is_ignored_and_measured_again(
    fake: Callable[[float, float], FakeTimer],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    damage: str,
) -> None:
    timer = fake(0.5, 0.5)
    auto(tmp_path)  # writes the cache file for this machine
    path = _only_cache(tmp_path)
    good = json.loads(path.read_text())
    forged = {**good, "matmul": {"fp32_s": 1.0, "bf16_s": 0.1, "speedup": 10.0}}
    forged["steps"] = {k: forged["matmul"] for k in good["steps"]}  # would say: bf16
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text(json.dumps(forged))
    path.unlink()
    if damage == "garbage":
        path.write_bytes(b"\x00{not json")
    elif damage == "truncated":
        path.write_text(json.dumps(forged)[:40])
    elif damage == "list":
        path.write_text("[1, 2, 3]")
    elif damage == "nan":
        path.write_text(json.dumps(forged).replace("10.0", "NaN"))
    elif damage == "other key":
        path.write_text(json.dumps({**forged, "key": {**forged["key"], "torch": "1.0"}}))
    elif damage == "huge":
        path.write_text(json.dumps(forged) + " " * (2 << 20))
    elif damage == "symlink":  # a link to a record that would pick bf16: not followed
        path.symlink_to(elsewhere)
    elif damage == "fifo":  # opening a FIFO for reading would block forever
        os.mkfifo(path)
    elif damage == "directory":
        path.mkdir()
    choice = auto(tmp_path)
    assert choice.chosen == "fp32"  # measured again (0.5x), not read from the forgery
    assert timer.timed == ["matmul", "matmul"]
    if damage in ("garbage", "truncated", "list", "huge", "symlink"):
        assert "precision cache" in caplog.text
    if damage != "directory":  # a directory in the way only costs a probe each time
        assert path.is_file() and not path.is_symlink()  # replaced by a good record
        assert json.loads(path.read_text())["matmul"]["speedup"] == 0.5
    assert json.loads(elsewhere.read_text()) == forged  # a link's target is never written


def test_an_unwritable_cache_costs_a_probe_not_the_run(
    fake: Callable[[float, float], FakeTimer], tmp_path: Path
) -> None:
    fake(2.0, 1.5)
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert auto(blocked / "precision").chosen == "bf16"  # its parent is a file


# -- the probe step ------------------------------------------------------------------------


def test_training_step_leaves_the_model_and_the_random_state_untouched() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Dropout(0.5), nn.Linear(8, 3))
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    step = training_step(model, (4, 1, 4, 4), 3, "cpu")
    for precision in ("fp32", "bf16"):
        step(precision)
    assert torch.equal(torch.get_rng_state(), rng)  # dropout drew from a forked generator
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert not model.training


def test_precision_choice_round_trips_and_refuses_junk() -> None:
    choice = PrecisionChoice("auto", "bf16", "why", {"matmul_speedup": 2.0})
    assert PrecisionChoice.from_dict(choice.to_dict()) == choice
    for junk in (None, [], {"requested": "auto"}, {"requested": "auto", "chosen": "fp8"}):
        assert PrecisionChoice.from_dict(junk) is None
