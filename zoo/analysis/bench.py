"""The benchmark harness: parameters, FLOPs, throughput, latency and peak memory.

One :class:`BenchRecord` per model, batch size and mode (``inference`` or ``train``)::

    from zoo.analysis.bench import measure
    rec = measure("mlpmixer_p4", batch_size=128, mode="train", min_time=2.0)
    rec.images_per_s, rec.latency_ms_p50, rec.flops_per_image

How a measurement is made, so that numbers are stable on a noisy machine:

- warm-up: at least ``warmup`` steps and ``warmup_time`` seconds (default ``min_time / 5``)
  for compilation, caches, the allocator and the thread pool;
- then timed steps until at least ``min_time`` seconds and ``min_reps`` steps have passed;
  on CUDA every step ends with ``torch.cuda.synchronize()`` before the clock is read;
- on a machine shared with other processes, ``threads=1`` avoids the worst noise: a
  multi-threaded step waits for its slowest thread, and a descheduled thread costs a whole
  scheduler time slice (tens of ms) per parallel region;
- the per-step latency distribution gives p25/p50/p75/p90; ``images_per_s`` is
  ``batch_size / p50`` (the median step), and the spread is reported as the latency IQR.

A training step is forward, cross-entropy loss, backward and an Adam step (the seed's
optimiser, fused where torch has the kernel, as training builds it) on random data. FLOPs
come from ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions, 2 FLOPs per
multiply-add); training counts forward + backward.

How close a model runs to the machine's limit: ``achieved_flops_per_s`` is the model FLOPs of
a step per image times ``images_per_s``, where a training step counts 3x the forward FLOPs
(forward + backward, the convention of MFU, "model FLOPs utilisation") and inference the
forward FLOPs. ``peak_flops_per_s`` is the device's matmul rate in the same dtype at the same
thread count (:func:`zoo.analysis.peak.peak_flops`, measured once per machine and cached;
the probe is also recorded in ``env["peak_probe"]``), and ``mfu`` is achieved / peak.

``precision="auto"`` measures each model in the precision a recipe's ``precision: auto``
would train it in here (:func:`zoo.devices.choose_precision`, timings cached in
``<zoo home>/precision/``); the record's ``precision`` is the chosen one, and
``env["precision_choice"]`` says what was requested, what was chosen and why.

Peak memory (``peak_mem_kind`` says which): on CUDA ``torch.cuda.max_memory_allocated``
over warm-up and timed steps (weights, input, gradients, optimiser state, activations);
elsewhere the peak of the bytes held by live tensors during one extra eager step, tracked op
by op (``live_tensor_peak``: the same things counted, allocator caches and fragmentation
not). A training step is measured as the first one, so gradients and the optimiser state
are allocated inside it, as on CUDA. A process's resident set is no use here: the CPU
allocator keeps and reuses freed memory, so its growth is mostly 0 after the first model.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from zoo.analysis.peak import peak_flops
from zoo.devices import (
    PRECISIONS,
    RECIPE_PRECISIONS,
    PrecisionChoice,
    autocast,
    fused_optimizer,
    select_device,
)
from zoo.env import environment
from zoo.errors import ZooError

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "FORMATS",
    "MODES",
    "PRECISIONS",
    "BenchError",
    "BenchRecord",
    "format_records",
    "measure",
    "resolve_models",
    "run_bench",
]

log = logging.getLogger(__name__)

MODES = ("inference", "train")
# what a record's env keeps of the peak probe (zoo.analysis.peak)
_PROBE_KEYS = ("size", "reps", "median_flops_per_s", "load_average", "measured_at", "key")
FORMATS = ("table", "json", "csv", "md")


class BenchError(ZooError):
    """A benchmark was asked for with impossible settings."""


@dataclass(frozen=True)
class BenchRecord:
    """One measurement. Times are per step of ``batch_size`` images."""

    model: str
    mode: str  # "inference" | "train"
    batch_size: int
    input_size: tuple[int, int, int]  # (C, H, W)
    precision: str
    channels_last: bool
    compile: str | None  # torch.compile mode, None when not compiled
    device: str
    params: int
    flops_per_image: int  # forward (inference) or forward + backward (train)
    images_per_s: float  # batch_size / median step time
    latency_ms_p50: float
    latency_ms_p90: float
    latency_ms_iqr: float  # p75 - p25: the spread
    latency_ms_min: float
    latency_ms_max: float
    reps: int
    measured_s: float
    peak_mem_bytes: int | None
    peak_mem_kind: str
    achieved_flops_per_s: float  # (3x for train) forward FLOPs per image x images_per_s
    peak_flops_per_s: float  # the device's matmul peak in this dtype and thread count
    mfu: float  # achieved_flops_per_s / peak_flops_per_s
    env: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        return d


# -- building what is measured -------------------------------------------------------------


def _input_size(
    model: nn.Module, img_size: int | None, in_chans: int | None
) -> tuple[int, int, int]:
    args = getattr(model, "zoo_cfg", {}).get("args", {})
    chans = in_chans or args.get("in_chans") or 3
    size = img_size or args.get("img_size") or 32
    return int(chans), int(size), int(size)


def _build(
    model: str | nn.Module, img_size: int | None, in_chans: int | None
) -> tuple[str, nn.Module]:
    if not isinstance(model, str):
        cfg = getattr(model, "zoo_cfg", {})
        return str(cfg.get("architecture", type(model).__name__)), model
    from zoo.weights.factory import create

    return model, create(model, img_size=img_size, in_chans=in_chans)


def _count_flops(step: Callable[[], Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return int(counter.get_total_flops())


def _inference_step(
    model: nn.Module, x: torch.Tensor, device: torch.device, precision: str
) -> Callable[[], Any]:
    import torch

    model.eval()

    def step() -> Any:
        with torch.inference_mode(), autocast(device.type, precision, training=False):
            return model(x)

    return step


def _forward(
    model: nn.Module, x: torch.Tensor, device: torch.device, precision: str
) -> Callable[[], Any]:
    """One forward pass without autograd, in the model's current mode: what a training
    step's model FLOPs are counted from (3x this)."""
    import torch

    def step() -> Any:
        with torch.no_grad(), autocast(device.type, precision, training=False):
            return model(x)

    return step


def _train_step(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device, precision: str
) -> Callable[[], Any]:
    import torch
    import torch.nn.functional as F

    model.train()
    optimizer = fused_optimizer(torch.optim.Adam, model.parameters(), lr=1e-3)  # as training
    # fp16 needs loss scaling to train; its cost belongs in the measurement.
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def step() -> Any:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device.type, precision, training=False):
            loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss

    return step


# -- timing --------------------------------------------------------------------------------


@contextlib.contextmanager
def _cuda_peak_memory(device: torch.device) -> Iterator[dict[str, Any]]:
    """On CUDA, yield a dict that holds the peak allocated ``bytes`` once the block has run."""
    import torch

    result: dict[str, Any] = {"bytes": None, "kind": "unavailable"}
    if device.type != "cuda":
        yield result
        return
    torch.cuda.reset_peak_memory_stats(device)
    yield result
    result.update(bytes=torch.cuda.max_memory_allocated(device), kind="cuda_max_allocated")


def live_tensor_peak(step: Callable[[], Any], held: Sequence[torch.Tensor]) -> int:
    """Peak bytes of live tensor storage while ``step`` runs, counting the ``held`` tensors
    (weights, inputs) as live throughout. Every op's outputs are recorded as they are made;
    storages whose last reference has gone are dropped before the next op's are added."""
    import torch
    from torch.multiprocessing.reductions import StorageWeakRef
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    live: dict[int, tuple[Any, int]] = {}
    peak = current = 0

    def track(tensor: torch.Tensor) -> None:
        nonlocal current, peak
        storage = tensor.untyped_storage()
        ref = StorageWeakRef(storage)
        if ref.cdata not in live and storage.nbytes() > 0:
            live[ref.cdata] = (ref, storage.nbytes())
            current += storage.nbytes()
            peak = max(peak, current)

    class Tracker(TorchDispatchMode):
        def __torch_dispatch__(
            self, func: Any, types: Any, args: Any = (), kwargs: Any = None
        ) -> Any:
            nonlocal current
            out = func(*args, **(kwargs or {}))
            for key, (ref, size) in list(live.items()):
                if ref.expired():
                    del live[key]
                    current -= size
            for leaf in tree_leaves(out):
                if isinstance(leaf, torch.Tensor):
                    track(leaf)
            return out

    for tensor in held:
        track(tensor)
    with Tracker():
        step()
    return peak


def _time_steps(
    step: Callable[[], Any],
    device: torch.device,
    *,
    min_time: float,
    min_reps: int,
    warmup: int,
    warmup_time: float,
    max_reps: int,
) -> list[float]:
    """Seconds per step, after warm-up, for at least ``min_time`` s and ``min_reps`` steps."""
    import torch

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    start = time.perf_counter()
    done = 0
    while done < warmup or time.perf_counter() - start < warmup_time:
        step()
        sync()
        done += 1
    times: list[float] = []
    while len(times) < max_reps and (len(times) < min_reps or sum(times) < min_time):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[int(q) - 1]


# torch.compile's modes (torch._inductor.list_mode_options)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


MAX_BATCH = 1 << 24  # far past any device's memory: the size estimate refuses well before
MAX_MIN_TIME = 3600.0  # an hour of timed steps per measurement


def _check(mode: str, precision: str, batch_size: int, min_time: float) -> None:
    if mode not in MODES:
        raise BenchError(f"unknown mode {mode!r}; choose one of: {', '.join(MODES)}")
    if precision not in RECIPE_PRECISIONS:
        raise BenchError(
            f"unknown precision {precision!r}; choose one of: {', '.join(RECIPE_PRECISIONS)}"
        )
    if not 1 <= batch_size <= MAX_BATCH:  # past int64 tensor sizes torch overflows
        raise BenchError(f"batch size must be between 1 and {MAX_BATCH:,}, got {batch_size}")
    if not 0 <= min_time <= MAX_MIN_TIME:
        raise BenchError(f"min_time must be between 0 and {MAX_MIN_TIME:g} seconds, got {min_time}")


def measure(
    model: str | nn.Module,
    batch_size: int = 128,
    *,
    mode: str = "inference",
    img_size: int | None = None,
    in_chans: int | None = None,
    precision: str = "fp32",
    channels_last: bool = False,
    compile: bool | str = False,
    device: str = "cpu",
    min_time: float = 1.0,
    min_reps: int = 5,
    warmup: int = 3,
    warmup_time: float | None = None,
    max_reps: int = 10_000,
    threads: int | None = None,
) -> BenchRecord:
    """Measure one model (a name for :func:`zoo.create`, or a module) at one batch size.

    ``compile`` is False, True (default mode) or a ``torch.compile`` mode string.
    ``img_size``/``in_chans`` default to the model's own (``zoo_cfg``), else 32x32x3.
    ``threads`` sets torch's intra-op threads for this measurement only (recorded in env).
    A module passed in is moved to ``device`` and, in train mode, its weights change.
    """
    import torch

    if threads is not None and threads < 1:
        raise BenchError(f"threads must be at least 1, got {threads}")
    saved = torch.get_num_threads()
    torch.set_num_threads(threads or saved)
    try:
        with _model_errors(model, mode):
            return _measure(
                model,
                batch_size,
                mode=mode,
                img_size=img_size,
                in_chans=in_chans,
                precision=precision,
                channels_last=channels_last,
                compile=compile,
                device=device,
                min_time=min_time,
                min_reps=min_reps,
                warmup=warmup,
                warmup_time=min_time / 5 if warmup_time is None else warmup_time,
                max_reps=max_reps,
            )
    finally:
        torch.set_num_threads(saved)


@contextlib.contextmanager
def _model_errors(model: str | nn.Module, mode: str) -> Iterator[None]:
    """An exception the measured model raises (a forward that does not fit the input, a
    plugin's bug, even ``sys.exit``) becomes one :class:`BenchError` naming the model; zoo's
    own errors and Ctrl-C pass through."""
    try:
        yield
    except ZooError:
        raise
    except (Exception, SystemExit, GeneratorExit) as e:
        name = model if isinstance(model, str) else type(model).__name__
        what = " ".join(str(e).split())[:300] or "no message"
        raise BenchError(
            f"{name} failed while being measured in {mode} mode ({type(e).__name__}: {what}); "
            "check that --img-size and --in-chans fit it (--debug shows the traceback)"
        ) from e


def estimate_bytes(net: nn.Module, size: Sequence[int], batch_size: int, mode: str) -> int | None:
    """Bytes one measured step needs, estimated without allocating: the forward pass runs
    on ``meta`` tensors and every module output is counted. Inference holds the weights, the
    input and about the two largest activations; training also every activation (kept for
    backward), gradients and Adam's two moments. None when the model cannot run on meta."""
    import torch
    from torch.func import functional_call

    weights = {n: torch.empty_like(t, device="meta") for n, t in net.named_parameters()}
    weights.update({n: torch.empty_like(t, device="meta") for n, t in net.named_buffers()})
    outputs: list[int] = []

    def count(module: nn.Module, args: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            outputs.append(out.numel() * out.element_size())

    hooks = [m.register_forward_hook(count) for m in net.modules()]
    try:
        x = torch.empty(batch_size, *size, device="meta")
        functional_call(net, weights, (x,))
    except Exception:  # some modules cannot run on meta: no estimate, measure as before
        return None
    finally:
        for hook in hooks:
            hook.remove()
    weight_bytes = sum(t.numel() * t.element_size() for t in weights.values())
    input_bytes = batch_size * math.prod(size) * 4
    if mode == "train":
        return 4 * weight_bytes + input_bytes + sum(outputs)
    return weight_bytes + input_bytes + sum(sorted(outputs)[-2:])


def _check_memory(
    name: str, net: nn.Module, size: Sequence[int], batch_size: int, mode: str, dev: Any
) -> None:
    from zoo.devices import gib, memory_budget

    budget = memory_budget(str(dev))
    need = estimate_bytes(net, size, batch_size, mode) if budget is not None else None
    if need is not None and budget is not None and need > budget:
        raise BenchError(
            f"{name} at batch size {batch_size} and input {'x'.join(map(str, size))} needs "
            f"about {gib(need)} for one {mode} step (weights, input, activations), more than "
            f"the {gib(budget)} available on {dev}; use a smaller -b or --img-size"
        )


def _measure(
    model: str | nn.Module,
    batch_size: int,
    *,
    mode: str,
    img_size: int | None,
    in_chans: int | None,
    precision: str,
    channels_last: bool,
    compile: bool | str,
    device: str,
    min_time: float,
    min_reps: int,
    warmup: int,
    warmup_time: float,
    max_reps: int,
) -> BenchRecord:
    import torch

    _check(mode, precision, batch_size, min_time)
    dev = torch.device(select_device(device))
    name, net = _build(model, img_size, in_chans)
    size = _input_size(net, img_size, in_chans)
    net = net.to(dev)
    params = sum(p.numel() for p in net.parameters())
    _check_memory(name, net, size, batch_size, mode, dev)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, *size, generator=gen).to(dev)
    y = torch.randint(0, 2, (batch_size,), generator=gen).to(dev)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    choice = None
    if precision == "auto":
        choice = _auto_precision(name, net, x, dev, channels_last)
        precision = choice.chosen
    make_step = (
        (lambda m: _inference_step(m, x, dev, precision))
        if mode == "inference"
        else (lambda m: _train_step(m, x, y, dev, precision))
    )
    compile_mode = None
    timed: nn.Module = net
    if compile:
        compile_mode = compile if isinstance(compile, str) else "default"
        if compile_mode not in COMPILE_MODES:
            raise BenchError(
                f"unknown --compile-mode {compile_mode!r}; choose one of: "
                + ", ".join(COMPILE_MODES)
            )
        timed = torch.compile(net, mode=compile_mode)  # type: ignore[assignment]
    # On CUDA memory is tracked from before the first step, so warm-up's allocations count.
    with _cuda_peak_memory(dev) as mem:
        times = _time_steps(
            make_step(timed),
            dev,
            min_time=min_time,
            min_reps=min_reps,
            warmup=warmup,
            warmup_time=warmup_time,
            max_reps=max_reps,
        )
    p50 = statistics.median(times)
    # FLOPs on the eager model (FlopCounterMode cannot see inside a compiled graph).
    flops = _count_flops(make_step(net))
    forward = flops if mode == "inference" else _count_flops(_forward(net, x, dev, precision))
    images_per_s = batch_size / p50
    achieved = (3 if mode == "train" else 1) * (forward // batch_size) * images_per_s
    peak = peak_flops(str(dev), precision)
    if dev.type != "cuda":  # a fresh step: a training one allocates gradients and Adam state
        held = [*net.parameters(), *net.buffers(), x, y]
        mem.update(bytes=live_tensor_peak(make_step(net), held), kind="live_tensor_peak")
    ms = [t * 1000 for t in times]
    return BenchRecord(
        model=name,
        mode=mode,
        batch_size=batch_size,
        input_size=size,
        precision=precision,
        channels_last=channels_last,
        compile=compile_mode,
        device=str(dev),
        params=params,
        flops_per_image=flops // batch_size,
        images_per_s=images_per_s,
        latency_ms_p50=p50 * 1000,
        latency_ms_p90=_percentile(ms, 90),
        latency_ms_iqr=_percentile(ms, 75) - _percentile(ms, 25),
        latency_ms_min=min(ms),
        latency_ms_max=max(ms),
        reps=len(times),
        measured_s=sum(times),
        peak_mem_bytes=mem["bytes"],
        peak_mem_kind=mem["kind"],
        achieved_flops_per_s=achieved,
        peak_flops_per_s=peak["peak_flops_per_s"],
        mfu=achieved / peak["peak_flops_per_s"],
        env={
            **environment(str(dev)),
            "peak_flops_per_s": peak["peak_flops_per_s"],
            "peak_probe": {k: peak.get(k) for k in _PROBE_KEYS},
            **({"precision_choice": choice.to_dict()} if choice is not None else {}),
        },
    )


def _auto_precision(
    name: str, net: nn.Module, x: torch.Tensor, dev: torch.device, channels_last: bool
) -> PrecisionChoice:
    """What ``precision: auto`` trains ``net`` in on ``dev`` at ``x``'s batch and shape."""
    from zoo.devices import choose_precision, training_step
    from zoo.weights.store import home

    shape = list(x.shape)
    choice = choose_precision(
        "auto",
        str(dev),
        cache_dir=home() / "precision",
        step=training_step(net, shape, 2, str(dev), channels_last=channels_last),
        workload={"model": name, "input": shape, "channels_last": channels_last},
    )
    log.info("%s: %s", name, choice.line())
    return choice


# -- many models ---------------------------------------------------------------------------


def resolve_models(names: Sequence[str]) -> list[str]:
    """Expand fnmatch patterns (``'mlpmixer_p*'``) to registered names; keep plain names
    (and run directories) as given so :func:`zoo.create` reports unknown ones."""
    from zoo.models.registry import list_models

    resolved: list[str] = []
    for name in names:
        if any(c in name for c in "*?["):
            matches = list_models(name)
            if not matches:
                raise BenchError(f"no model matches {name!r}; list models with `zoo models`")
            resolved += matches  # in natural order: mlpmixer_p2, p4, p8, p16
        else:
            resolved.append(name)
    return list(dict.fromkeys(resolved))


def run_bench(
    names: Sequence[str],
    batch_sizes: Sequence[int] = (128,),
    modes: Sequence[str] = MODES,
    **options: Any,
) -> list[BenchRecord]:
    """:func:`measure` every model (patterns expanded) x batch size x mode."""
    records = []
    for name in resolve_models(names):
        for batch_size in batch_sizes:
            for mode in modes:
                log.info("bench %s bs=%d %s", name, batch_size, mode)
                records.append(measure(name, batch_size, mode=mode, **options))
    return records


# -- output --------------------------------------------------------------------------------

_COLUMNS = (
    ("model", "model", "{}"),
    ("mode", "mode", "{}"),
    ("batch", "batch_size", "{}"),
    ("prec", "precision", "{}"),
    ("params", "params", "{:,}"),
    ("GFLOPs/img", "flops_per_image", "{:.3f}"),
    ("img/s", "images_per_s", "{:,.1f}"),
    ("p50 ms", "latency_ms_p50", "{:.2f}"),
    ("p90 ms", "latency_ms_p90", "{:.2f}"),
    ("IQR ms", "latency_ms_iqr", "{:.2f}"),
    ("reps", "reps", "{}"),
    ("peak MiB", "peak_mem_bytes", "{:.1f}"),
    ("GFLOP/s", "achieved_flops_per_s", "{:,.1f}"),
    ("MFU %", "mfu", "{:.1f}"),
)


def _cells(rec: BenchRecord) -> list[str]:
    cells = []
    for _, key, fmt in _COLUMNS:
        value = getattr(rec, key)
        if key == "flops_per_image":
            value = value / 1e9
        elif key == "peak_mem_bytes":
            value = math.nan if value is None else value / 2**20
        elif key == "achieved_flops_per_s":
            value = value / 1e9
        elif key == "mfu":
            value = 100 * value
        cells.append(fmt.format(value))
    return cells


def _env_line(records: Sequence[BenchRecord]) -> str:
    env = records[0].env
    options = {(r.channels_last, r.compile, r.device) for r in records}
    opts = "; ".join(f"channels_last={c}, compile={m}, device={d}" for c, m, d in sorted(options))
    peaks = ", ".join(
        sorted({f"{r.precision} {r.peak_flops_per_s / 1e9:,.1f} GFLOP/s" for r in records})
    )
    chosen = sorted(
        {
            f"{r.model} -> {r.precision} ({r.env['precision_choice']['reason']})"
            for r in records
            if "precision_choice" in r.env
        }
    )
    auto = f" · precision auto: {'; '.join(chosen)}" if chosen else ""
    return (
        f"torch {env.get('torch')} · {env.get('device_name')} · {env.get('threads')} threads · "
        f"zoo {env.get('zoo_version')} ({env.get('git_sha') or 'no git'}) · {opts} · "
        f"img/s = batch / median step; IQR = spread of step latency; "
        f"peak memory: {records[0].peak_mem_kind}; GFLOP/s = forward FLOPs (x3 for train) "
        f"x img/s; MFU = GFLOP/s / matmul peak ({peaks}){auto}"
    )


def _flat(rec: BenchRecord) -> dict[str, Any]:
    row = {f.name: getattr(rec, f.name) for f in fields(rec) if f.name != "env"}
    row["input_size"] = "x".join(map(str, rec.input_size))
    row.update(
        {f"env_{k}": json.dumps(v) if isinstance(v, dict) else v for k, v in rec.env.items()}
    )
    return row


def format_records(records: Sequence[BenchRecord], fmt: str = "table") -> str:
    """Render records as an aligned ``table``, JSON lines (``json``), ``csv`` or markdown
    (``md``). JSON and CSV carry the env in every record; table and md in a footer line."""
    if fmt not in FORMATS:
        raise BenchError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if fmt == "json":
        return "".join(json.dumps(r.to_dict()) + "\n" for r in records)
    if not records:
        return ""
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(_flat(records[0])), lineterminator="\n")
        writer.writeheader()
        writer.writerows(_flat(r) for r in records)
        return buf.getvalue()
    header = [h for h, _, _ in _COLUMNS]
    rows = [_cells(r) for r in records]
    if fmt == "md":
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines) + f"\n\n{_env_line(records)}\n"
    widths = [max(len(c) for c in col) for col in zip(header, *rows, strict=True)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    head = "  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))
    return "\n".join([head, *lines, _env_line(records)]) + "\n"
