"""zoo.analysis.peak: the matmul peak probe, its arithmetic and its cache.

The timing function is replaced by a fake clock (a device doing ``RATE`` FLOP/s) wherever a
number is asserted, so no test depends on how busy the machine is.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from zoo.analysis import peak

RATE = 1e9  # FLOP/s of the fake device


@pytest.fixture
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Products take 2n^3 / RATE seconds; returns the list of matrix sizes timed."""
    timed: list[int] = []

    def fake(a, b, reps: int) -> list[float]:
        timed.extend([a.shape[0]] * reps)
        return [2 * a.shape[0] ** 3 / RATE] * reps

    monkeypatch.setattr(peak, "_time_matmul", fake)
    monkeypatch.setattr(peak, "_MEMO", {})
    monkeypatch.setattr(peak, "load_average", lambda: [0.0, 0.0, 0.0])  # a quiet machine
    return timed


def _cache_files(home: Path) -> list[Path]:
    return sorted((home / "peak").glob("*.json"))


def test_probe_measures_the_rate_and_grows_the_matrix(fake_clock: list[int]) -> None:
    result = peak.peak_flops("cpu", "fp32", probe_time=1.0)
    assert result["peak_flops_per_s"] == pytest.approx(RATE)
    # 256 takes 0.034 s, under a tenth of the budget; 512 takes 0.27 s
    assert result["size"] == 512 and set(fake_clock) == {256, 512}
    assert result["reps"] >= 3 and result["cached"] is False
    assert result["key"]["dtype"] == "float32" and result["key"]["device_type"] == "cpu"


def test_probe_is_cached_on_disk_and_in_memory(
    fake_clock: list[int], _zoo_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = peak.peak_flops("cpu", "fp32")
    calls = len(fake_clock)
    assert calls > 0 and len(_cache_files(_zoo_home)) == 1
    assert peak.peak_flops("cpu", "fp32")["cached"] is True  # from memory
    monkeypatch.setattr(peak, "_MEMO", {})  # a new process: from disk
    again = peak.peak_flops("cpu", "fp32")
    assert again["cached"] is True and len(fake_clock) == calls
    assert again["peak_flops_per_s"] == first["peak_flops_per_s"]


def test_a_probe_on_a_busy_machine_is_used_but_not_cached(
    fake_clock: list[int], _zoo_home: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    """A low reading under load would stay cached for good: it serves this process only."""
    busy = [4.0 * (os.cpu_count() or 1), 1.0, 1.0]
    monkeypatch.setattr(peak, "load_average", lambda: busy)
    first = peak.peak_flops("cpu", "fp32")
    assert first["cached"] is False and _cache_files(_zoo_home) == []
    assert "the machine is busy" in caplog.text
    assert peak.peak_flops("cpu", "fp32")["cached"] is True  # memory, this process only
    monkeypatch.setattr(peak, "_MEMO", {})
    monkeypatch.setattr(peak, "load_average", lambda: [0.1, 0.1, 0.1])
    assert peak.peak_flops("cpu", "fp32")["cached"] is False  # measured again, now kept
    assert len(_cache_files(_zoo_home)) == 1


def test_cache_key_includes_dtype_and_threads(fake_clock: list[int], _zoo_home: Path) -> None:
    import torch

    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = peak.probe_key("cpu", "fp32")
        peak.peak_flops("cpu", "fp32")
        calls = len(fake_clock)
        assert peak.peak_flops("cpu", "bf16")["key"]["dtype"] == "bfloat16"
        assert len(fake_clock) > calls  # another dtype: measured again
        calls = len(fake_clock)
        torch.set_num_threads(2)
        two = peak.probe_key("cpu", "fp32")
        assert peak.peak_flops("cpu", "fp32")["cached"] is False
        assert len(fake_clock) > calls  # another thread count: measured again
    finally:
        torch.set_num_threads(saved)
    assert (one["threads"], two["threads"]) == (1, 2)
    assert {k: v for k, v in one.items() if k != "threads"} == {
        k: v for k, v in two.items() if k != "threads"
    }
    assert len(_cache_files(_zoo_home)) == 3


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        '{"peak_flops_per_s": "fast"}',
        '{"peak_flops_per_s": -1.0, "key": null}',
        "[]",
    ],
)
def test_bad_cache_file_is_ignored_and_rewritten(
    fake_clock: list[int], _zoo_home: Path, monkeypatch: pytest.MonkeyPatch, content: str
) -> None:
    peak.peak_flops("cpu", "fp32")
    (path,) = _cache_files(_zoo_home)
    path.write_text(content)
    monkeypatch.setattr(peak, "_MEMO", {})
    calls = len(fake_clock)
    result = peak.peak_flops("cpu", "fp32")
    assert result["cached"] is False and len(fake_clock) > calls
    stored = json.loads(path.read_text())
    assert stored["key"] == peak.probe_key("cpu", "fp32")
    assert stored["peak_flops_per_s"] == pytest.approx(RATE)


def test_cache_of_another_key_is_not_used(
    fake_clock: list[int], _zoo_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    peak.peak_flops("cpu", "fp32")
    (path,) = _cache_files(_zoo_home)
    record = json.loads(path.read_text())
    record["key"]["device_name"] = "another CPU"
    record["peak_flops_per_s"] = 1.0
    path.write_text(json.dumps(record))
    monkeypatch.setattr(peak, "_MEMO", {})
    assert peak.peak_flops("cpu", "fp32")["peak_flops_per_s"] == pytest.approx(RATE)


def test_real_probe_returns_a_finite_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peak, "_MEMO", {})
    result = peak.peak_flops("cpu", "fp32", probe_time=0.05)
    assert math.isfinite(result["peak_flops_per_s"]) and result["peak_flops_per_s"] > 0
    assert 256 <= result["size"] <= 2048 and result["reps"] >= 3


def test_peak_is_the_fastest_product_and_the_median_is_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Load only slows a product down: every other one here is 4x slower."""
    slow = iter([False, True] * 1000)

    def noisy(a, b, reps: int) -> list[float]:
        return [2 * a.shape[0] ** 3 / RATE * (4 if next(slow) else 1) for _ in range(reps)]

    monkeypatch.setattr(peak, "_time_matmul", noisy)
    monkeypatch.setattr(peak, "_MEMO", {})
    result = peak.peak_flops("cpu", "fp32")
    assert result["peak_flops_per_s"] == pytest.approx(RATE)
    assert RATE / 4 <= result["median_flops_per_s"] < RATE
    assert "load_average" in result


def test_unknown_precision_names_the_choices() -> None:
    from zoo.errors import ZooError

    with pytest.raises(ZooError, match="unknown precision 'fp8'; choose one of: fp32, bf16, fp16"):
        peak.probe_key("cpu", "fp8")
