"""The machine's limit: peak matmul FLOP/s per device, dtype and thread count.

:func:`peak_flops` times square matmuls in the dtype a precision computes in and returns the
fastest rate. It is what :mod:`zoo.analysis.bench` divides achieved FLOP/s by to give MFU
(model FLOPs utilisation). A probe takes about ``probe_time`` seconds (default 1 s), so it
runs once per machine: the result is cached in ``<zoo home>/peak/`` (``$ZOO_HOME``, else
``~/.cache/zoo``) under a key of the device's name (CPU or GPU model), torch version, dtype
and, on a CPU, the thread count; and once per process in memory. A cache file that cannot
be read or does not match its key is ignored and rewritten.

The peak is the fastest of the timed products, not the median: noise on a shared machine
only ever slows a product down, and a median taken under load made a lightly loaded model's
MFU exceed 100 %. The median rate and the load average are kept in the cache record too.

A CPU probe made while the machine is busy (a 1-minute load average above its CPU count, as
when other jobs train) reads low, and a low peak would stay cached for good: such a result
is used for this process only, with a warning, and measured again by the next one.

The matrix grows from 256 by doubling until one product takes at least a tenth of the
budget (at most 2048 on a CPU, 8192 on a GPU): a CPU without native bf16 runs a 1024-square
bf16 matmul for seconds, a GPU needs large matrices to reach its peak.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo._io import atomic_write_json
from zoo.env import device_name, load_average
from zoo.errors import ZooError

if TYPE_CHECKING:
    import torch

__all__ = ["peak_flops", "probe_key"]

log = logging.getLogger(__name__)

_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
_MIN_SIZE = 256
_MAX_SIZE = {"cpu": 2048, "cuda": 8192}
# key (as JSON) -> cache record; a process probes each key at most once
_MEMO: dict[str, dict[str, Any]] = {}


def probe_key(device: str = "cpu", precision: str = "fp32") -> dict[str, Any]:
    """What a peak depends on: device kind and name, torch version, dtype, CPU threads."""
    import torch

    if precision not in _DTYPES:
        raise ZooError(f"unknown precision {precision!r}; choose one of: {', '.join(_DTYPES)}")
    kind = device.split(":")[0]
    return {
        "device_type": kind,
        "device_name": device_name(device),
        "torch": torch.__version__,
        "dtype": _DTYPES[precision],
        "threads": torch.get_num_threads() if kind == "cpu" else None,
    }


def peak_flops(
    device: str = "cpu", precision: str = "fp32", *, probe_time: float = 1.0
) -> dict[str, Any]:
    """The peak matmul rate of ``device`` in ``precision``'s dtype at torch's current thread
    count: ``{"peak_flops_per_s", "median_flops_per_s", "size", "reps", "probe_s",
    "load_average", "measured_at", "key", "cached"}``. Cached (see the module docstring);
    ``cached`` is False when this call measured."""
    key = probe_key(device, precision)
    text = json.dumps(key, sort_keys=True)
    if text in _MEMO:
        return {**_MEMO[text], "cached": True}
    path = _cache_path(text)
    record = _read(path, key)
    if record is None:
        busy_before = _busy(device)
        record = {"key": key, **_probe(device, key["dtype"], probe_time)}
        busy = busy_before or _busy(device)
        if busy:
            log.warning(
                "the machine is busy (load average %s on %d CPUs): the %s peak measured now "
                "(%.3g FLOP/s) may read low; it is not cached, the next run measures again",
                busy,
                os.cpu_count() or 1,
                key["dtype"],
                record["peak_flops_per_s"],
            )
        else:
            try:  # a cache: damage there is replaced; a directory in the way costs a probe
                atomic_write_json(path, record, owned=True)
            except (OSError, ZooError) as e:
                log.warning("could not cache the peak probe in %s (%s)", path, e)
        cached = False
    else:
        cached = True
    _MEMO[text] = record
    return {**record, "cached": cached}


def _busy(device: str) -> list[float] | None:
    """The load average when a CPU ``device`` is too busy to measure its peak, else None."""
    load = load_average()
    if device.split(":")[0] != "cpu" or not load:
        return None
    return load if load[0] > (os.cpu_count() or 1) else None


def _cache_path(key_text: str) -> Path:
    from zoo.weights.store import home

    digest = hashlib.sha256(key_text.encode()).hexdigest()[:16]
    return home() / "peak" / f"{digest}.json"


def _read(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The cached record at ``path``, or None when it is missing, unreadable or not for
    ``key`` (a hash collision, a hand edit, a half-written file from an older zoo)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        value = float(record["peak_flops_per_s"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError, RecursionError) as exc:
        log.warning("ignoring the unreadable peak cache %s (%s); measuring again", path, exc)
        return None
    if record.get("key") != key or not (math.isfinite(value) and value > 0):
        log.warning("ignoring the peak cache %s: it does not match %s", path, key)
        return None
    return dict(record)


def _time_matmul(a: torch.Tensor, b: torch.Tensor, reps: int) -> list[float]:
    """Seconds for each of ``reps`` products ``a @ b`` (synchronised on CUDA)."""
    import torch

    def sync() -> None:
        if a.device.type == "cuda":
            torch.cuda.synchronize(a.device)

    times = []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync()
        times.append(time.perf_counter() - t0)
    return times


def _probe(device: str, dtype_name: str, budget: float) -> dict[str, Any]:
    import torch

    dtype = getattr(torch, dtype_name)
    max_size = _MAX_SIZE.get(device.split(":")[0], 2048)
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    size = _MIN_SIZE
    while True:  # grow the matrix until one product is long enough to time
        a, b = (torch.randn(size, size, generator=gen).to(device, dtype) for _ in range(2))
        first = _time_matmul(a, b, 2)[-1]  # the first is warm-up
        if first >= budget / 10 or size >= max_size:
            break
        size *= 2
    times = [first]
    while len(times) < 3 or (sum(times) < budget / 2 and len(times) < 1000):
        times += _time_matmul(a, b, 1)
    flops = 2 * size**3
    return {
        "peak_flops_per_s": flops / min(times),
        "median_flops_per_s": flops / statistics.median(times),
        "load_average": load_average(),
        "size": size,
        "reps": len(times),
        "probe_s": time.perf_counter() - start,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
