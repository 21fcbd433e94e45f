"""Devices and precision, for training and for measurement alike.

:func:`select_device` turns ``auto`` (or a name) into the device to use; :func:`autocast`
gives the autocast context of a precision (``fp32``, ``bf16``, ``fp16``) on a device type.
torch is imported inside the functions, so importing this module is free.

:func:`choose_precision` turns ``precision: auto`` into the fastest precision, bf16
autocast or fp32, that a recipe may train in: bf16 is 1.7-1.9x faster than fp32 on a CPU
with native bf16 (avx512_bf16, AMX) and 10-100x slower on one without (avx2). On a CPU it
measures, once per machine: a small bf16 and fp32 matmul, and, when bf16 wins that by
``AUTO_SPEEDUP``, one training step of the model at hand in each (see
:func:`training_step`). bf16 is chosen where it is at least ``AUTO_SPEEDUP`` times as fast
in both. The timings are cached in ``cache_dir`` (the caller passes ``<zoo home>/precision``)
under a key of the CPU model, torch version and thread count; a cache file that is a link,
too large, unreadable or for another key is ignored and measured again. On CUDA, auto is
bf16 where the GPU supports it, without measuring; elsewhere (mps) fp32. ``$ZOO_PRECISION``
(``fp32``, ``bf16``, ``fp16``) decides ``auto`` without measuring, for reproducible runs
across machines and for tests.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo._fs import read_capped
from zoo._io import atomic_write_json
from zoo.env import device_name
from zoo.errors import RecipeError, ZooError

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "AUTO_SPEEDUP",
    "PRECISIONS",
    "PRECISION_ENV",
    "RECIPE_PRECISIONS",
    "PrecisionChoice",
    "autocast",
    "autocast_dtype",
    "check_precision",
    "choose_precision",
    "fused_optimizer",
    "gib",
    "memory_budget",
    "select_device",
    "training_step",
]

log = logging.getLogger(__name__)

PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
RECIPE_PRECISIONS: tuple[str, ...] = ("auto", *PRECISIONS)  # what a recipe may ask for
AUTO_SPEEDUP = 1.2  # auto picks bf16 where it is at least this many times as fast as fp32
PRECISION_ENV = "ZOO_PRECISION"  # decides `auto` without measuring


def select_device(
    requested: str | None = "auto", *, cuda: bool | None = None, mps: bool | None = None
) -> str:
    """``auto`` picks cuda, then mps, then cpu; anything else is checked and returned.
    ``cuda``/``mps`` say what is available (default: ask torch)."""
    import torch

    if cuda is None:
        cuda = torch.cuda.is_available()
    if mps is None:
        mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    requested = (requested or "auto").lower()
    if requested == "auto":
        return "cuda" if cuda else "mps" if mps else "cpu"
    kind = requested.split(":")[0]
    available = {"cpu": True, "cuda": cuda, "mps": mps}
    if kind not in available or (kind != "cuda" and ":" in requested):
        raise RecipeError(f"unknown device {requested!r}; use auto, cpu, cuda, cuda:N or mps")
    if not available[kind]:
        raise RecipeError(
            f"device {requested!r} is not available on this machine; use --device auto or cpu"
        )
    return requested


def autocast_dtype(
    precision: str, device_type: str, *, training: bool = True
) -> torch.dtype | None:
    """The dtype to autocast to for ``precision`` on ``device_type`` (None: plain fp32).
    Training in fp16 needs a gradient scaler, which zoo supports on CUDA only."""
    import torch

    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if training and device_type != "cuda":
            raise RecipeError(
                f"precision fp16 needs a CUDA device (it trains with a gradient scaler), but the "
                f"device is {device_type}; use precision: bf16 or fp32"
            )
        return torch.float16
    if precision == "auto":
        raise RecipeError("precision auto must be resolved first (zoo.devices.choose_precision)")
    raise RecipeError(f"unknown precision {precision!r}; use {', '.join(RECIPE_PRECISIONS)}")


def autocast(
    device_type: str, precision: str, *, training: bool = True
) -> contextlib.AbstractContextManager[Any]:
    """The autocast context for ``precision`` on ``device_type`` (a no-op for fp32)."""
    import torch

    dtype = autocast_dtype(precision, device_type, training=training)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)


def check_precision(precision: str, device_type: str) -> None:
    """Refuse a recipe's ``precision`` (``auto`` or one of :data:`PRECISIONS`) that cannot
    train on ``device_type``, before any data is loaded."""
    if precision != "auto":
        autocast_dtype(precision, device_type)
    elif os.environ.get(PRECISION_ENV):
        _env_precision(device_type)


# -- precision: auto -----------------------------------------------------------------------


@dataclass(frozen=True)
class PrecisionChoice:
    """What a run or a benchmark was asked for (``requested``), what it computes in
    (``chosen``), why, and the timings that decided it (``probe``, empty when none did)."""

    requested: str
    chosen: str
    reason: str
    probe: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "requested": self.requested,
            "chosen": self.chosen,
            "reason": self.reason,
        }
        if self.probe:
            out["probe"] = dict(self.probe)
        return out

    @classmethod
    def from_dict(cls, data: Any) -> PrecisionChoice | None:
        """The choice :meth:`to_dict` wrote, or None when ``data`` is not one."""
        if not isinstance(data, Mapping):
            return None
        requested, chosen, reason = (data.get(k) for k in ("requested", "chosen", "reason"))
        if requested not in RECIPE_PRECISIONS or chosen not in PRECISIONS:
            return None
        probe = data.get("probe")
        return cls(
            str(requested),
            str(chosen),
            str(reason or ""),
            dict(probe) if isinstance(probe, Mapping) else {},
        )

    def line(self) -> str:
        """One log line: ``precision auto -> fp32: <reason>``."""
        if self.requested == self.chosen:
            return f"precision {self.chosen}: {self.reason}"
        return f"precision {self.requested} -> {self.chosen}: {self.reason}"


def training_step(
    model: nn.Module,
    input_shape: Sequence[int],
    num_classes: int,
    device: str,
    *,
    channels_last: bool = False,
) -> Callable[[str], None]:
    """A function that runs one training step (forward, cross-entropy, backward) of a copy of
    ``model`` on random data of ``input_shape`` (batch first) in a precision: what
    :func:`choose_precision` times. The model, its gradients and torch's random state are
    left as they were, so probing changes nothing about the run that follows."""
    import torch

    device_type = device.split(":")[0]
    cuda = [torch.device(device)] if device_type == "cuda" else []
    made: list[Any] = []  # the copy and the batch, made on the first call: auto on CUDA, or
    # decided by $ZOO_PRECISION or the cache, never calls it

    def step(precision: str) -> None:
        if not made:
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(*input_shape, generator=gen).to(device)
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            classes = max(num_classes, 1)
            y = torch.randint(0, classes, (int(input_shape[0]),), generator=gen).to(device)
            made.extend([copy.deepcopy(model).train(), x, y])
        net, x, y = made
        with torch.random.fork_rng(devices=cuda):  # dropout draws from the run's generator
            net.zero_grad(set_to_none=True)
            with autocast(device_type, precision, training=False):
                logits = net(x)
            torch.nn.functional.cross_entropy(logits.float(), y).backward()
        if device_type == "cuda":
            torch.cuda.synchronize(torch.device(device))

    return step


def choose_precision(
    requested: str,
    device: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    step: Callable[[str], None] | None = None,
    workload: Mapping[str, Any] | None = None,
    threshold: float = AUTO_SPEEDUP,
) -> PrecisionChoice:
    """The precision to train in on ``device`` for a recipe's ``requested`` one (see the
    module docstring for ``auto``). ``step`` runs one training step of the model at hand in
    a precision (:func:`training_step`), ``workload`` names it in the cache (model, input
    shape, ...); without them auto decides by the matmul alone. ``cache_dir`` None: no cache."""
    import torch

    device_type = device.split(":")[0]
    if requested != "auto":
        autocast_dtype(requested, device_type)  # refuses unknown names, fp16 off CUDA
        return PrecisionChoice(requested, requested, "set explicitly")
    if os.environ.get(PRECISION_ENV):
        chosen = _env_precision(device_type)
        return PrecisionChoice("auto", chosen, f"${PRECISION_ENV}={chosen}")
    if device_type == "cuda":
        if torch.cuda.is_bf16_supported():
            return PrecisionChoice("auto", "bf16", f"{device_name(device)} supports bf16")
        return PrecisionChoice("auto", "fp32", f"{device_name(device)} has no bf16 support")
    if device_type != "cpu":
        return PrecisionChoice("auto", "fp32", f"auto measures CPUs and CUDA GPUs, not {device}")
    return _choose_on_cpu(device, cache_dir, step, workload, threshold)


def _env_precision(device_type: str) -> str:
    value = os.environ.get(PRECISION_ENV, "").strip().lower()
    if value not in PRECISIONS:
        raise RecipeError(
            f"${PRECISION_ENV} is {value!r}; set it to one of {', '.join(PRECISIONS)} "
            "(or unset it to let precision: auto measure)"
        )
    autocast_dtype(value, device_type)
    return value


def _choose_on_cpu(
    device: str,
    cache_dir: str | os.PathLike[str] | None,
    step: Callable[[str], None] | None,
    workload: Mapping[str, Any] | None,
    threshold: float,
) -> PrecisionChoice:
    import torch

    key = {
        "device_type": "cpu",
        "device_name": device_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    path = _cache_path(Path(cache_dir), key) if cache_dir is not None else None
    record = (_read_cache(path, key) if path is not None else None) or {"key": key, "steps": {}}
    measured = "matmul" not in record
    if measured:
        record["matmul"] = _time_pair(_matmul_step(), reps=3)
    speedup, what = record["matmul"]["speedup"], "a bf16 matmul"
    probe: dict[str, Any] = {"matmul_speedup": speedup}
    if speedup >= threshold and step is not None:  # worth timing the model itself
        name = json.dumps(dict(workload or {}), sort_keys=True, default=str)
        timed = record["steps"].get(name)
        if timed is None:
            try:
                timed = _time_pair(step, reps=2)
            except Exception as e:  # a model with an op that has no bf16 kernel here
                if path is not None and measured:
                    _write_cache(path, record)
                return PrecisionChoice("auto", "fp32", f"a bf16 training step failed ({e!r})")
            record["steps"] = _bounded({**record["steps"], name: timed})
            measured = True
        speedup, what = timed["speedup"], "a bf16 training step of this model"
        probe["step_speedup"] = speedup
    if path is not None and measured:
        _write_cache(path, record)
    probe["cached"] = not measured
    chosen = "bf16" if speedup >= threshold else "fp32"
    reason = (
        f"{what} runs {speedup:.2f}x as fast as fp32 on {key['device_name']} "
        f"({'>=' if chosen == 'bf16' else '<'} {threshold:g}x{'; cached' if not measured else ''})"
    )
    return PrecisionChoice("auto", chosen, reason, probe)


_CACHE_VERSION = 1
_MAX_CACHE_BYTES = 1 << 20
_MAX_STEPS = 64  # workloads kept per machine; the oldest go first


def _cache_path(cache_dir: Path, key: Mapping[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir / f"{digest}.json"


def _read_cache(path: Path, key: Mapping[str, Any]) -> dict[str, Any] | None:
    """The cached timings at ``path``, or None when missing, a link, too large, unreadable or
    not for ``key``; entries that are not timings are dropped."""
    if path.is_symlink():
        log.warning("ignoring the precision cache %s: it is a link; measuring again", path)
        return None
    try:
        record = json.loads(read_capped(path, _MAX_CACHE_BYTES))
    except FileNotFoundError:
        return None
    except (ZooError, OSError, ValueError, RecursionError) as e:
        log.warning("ignoring the unreadable precision cache %s (%s); measuring again", path, e)
        return None
    if (
        not isinstance(record, dict)
        or record.get("version") != _CACHE_VERSION
        or record.get("key") != dict(key)
    ):
        log.warning("ignoring the precision cache %s: it is not for %s", path, dict(key))
        return None
    out: dict[str, Any] = {"key": dict(key), "steps": {}}
    if _is_timing(record.get("matmul")):
        out["matmul"] = record["matmul"]
    steps = record.get("steps")
    if isinstance(steps, dict):
        out["steps"] = {k: v for k, v in steps.items() if isinstance(k, str) and _is_timing(v)}
    return out


def _is_timing(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    numbers = [value.get(k) for k in ("fp32_s", "bf16_s", "speedup")]
    return all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0
        for v in numbers
    )


def _write_cache(path: Path, record: Mapping[str, Any]) -> None:
    """Best effort: a cache that cannot be written costs a probe next time, not the run.
    The write replaces a link at ``path`` with a file; it never writes through one."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {"version": _CACHE_VERSION, **record}, owned=True)
    except (OSError, ZooError) as e:  # a directory in the way: measured again next time
        log.warning("could not cache the precision probe in %s (%s)", path, e)


def _bounded(steps: Mapping[str, Any]) -> dict[str, Any]:
    items = list(steps.items())
    return dict(items[-_MAX_STEPS:])


def _matmul_step(size: int = 256) -> Callable[[str], None]:
    """A square matmul in a precision's dtype: 256 is enough to tell native bf16 (2x fp32)
    from emulated bf16 (~1 % of fp32) in milliseconds, and not slow where bf16 is emulated."""
    import torch

    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=gen) for _ in range(2))
    pairs = {p: (a.to(d), b.to(d)) for p, d in (("fp32", torch.float32), ("bf16", torch.bfloat16))}

    def step(precision: str) -> None:
        torch.mm(*pairs[precision])

    return step


def _time_pair(step: Callable[[str], None], reps: int) -> dict[str, Any]:
    """The fastest of ``reps`` timed calls of ``step("fp32")`` and ``step("bf16")``,
    interleaved after one warm-up of each, so a burst of load slows both alike."""
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for precision in times:
        step(precision)  # warm-up: allocations, kernel selection
    for _ in range(reps):
        for precision, seen in times.items():
            start = time.perf_counter()
            step(precision)
            seen.append(time.perf_counter() - start)
    fp32, bf16 = min(times["fp32"]), min(times["bf16"])
    return {
        "fp32_s": fp32,
        "bf16_s": bf16,
        "speedup": fp32 / bf16 if bf16 > 0 else 0.0,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def memory_budget(device: str = "cpu") -> int | None:
    """Bytes a new allocation on ``device`` can take: free CUDA memory, or this machine's
    available RAM (``MemAvailable``, else physical memory); None when unknown (mps).
    Used to refuse absurd models and batches with an estimate instead of an OOM crash."""
    kind = device.split(":")[0]
    if kind == "cuda":
        import torch

        try:
            return int(torch.cuda.mem_get_info(torch.device(device))[0])
        except (RuntimeError, AssertionError):
            return None
    if kind != "cpu":
        return None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def gib(nbytes: float) -> str:
    """``"12.3 GiB"``: sizes in refusals."""
    return f"{nbytes / (1 << 30):.1f} GiB"


def fused_optimizer(
    cls: Callable[..., torch.optim.Optimizer], params: Any, **kwargs: Any
) -> torch.optim.Optimizer:
    """``cls(params, **kwargs)`` (a torch optimizer with a ``fused`` option: Adam, AdamW, SGD)
    with torch's fused kernel where torch has one for the parameters' device and dtype, else
    torch's default implementation. Fused updates every parameter in one kernel per step; the
    default runs several ops per parameter tensor on a CPU (mlp_relu's Adam step: 3x as long,
    benchmarks/results/fused_adam.md). Training and ``zoo bench`` both build their optimizers
    here, so bench measures the step a run takes.

    The choice survives ``load_state_dict``: torch would take ``fused`` from the saved state,
    so an older run's (non-fused) optimizer state would switch the kernel off; here it loads
    and the step continues fused, its counters moved to the parameters' device."""
    import torch

    def listed(ps: Any) -> list[torch.Tensor]:
        return [ps] if isinstance(ps, torch.Tensor) else list(ps)  # a generator reads once

    params = [{**p, "params": listed(p["params"])} if isinstance(p, dict) else p for p in params]
    tensors = [t for p in params for t in (p["params"] if isinstance(p, dict) else [p])]
    # torch checks this only at the first step; on mps some dtypes have no fused kernel
    if not all(t.is_floating_point() and t.device.type in _FUSED_DEVICES for t in tensors):
        return cls(params, **kwargs)
    optimizer = cls(params, fused=True, **kwargs)
    optimizer.register_load_state_dict_post_hook(_keep_fused)
    return optimizer


_FUSED_DEVICES = ("cpu", "cuda")  # where torch's fused Adam, AdamW and SGD run for every float


def _keep_fused(optimizer: torch.optim.Optimizer) -> None:
    import torch

    for group in optimizer.param_groups:
        group["fused"], group["foreach"] = True, None  # fused and foreach exclude each other
        for param in group["params"]:
            step = optimizer.state.get(param, {}).get("step")
            if isinstance(step, torch.Tensor):  # the fused kernel reads it on the device
                optimizer.state[param]["step"] = step.to(param.device, torch.float32)
