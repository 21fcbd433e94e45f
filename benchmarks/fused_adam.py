"""Fused vs default Adam: what a training step of a built-in gains from torch's fused kernel.

torch's default Adam on a CPU updates each parameter tensor with several ops (its for-loop
implementation; foreach is the default on CUDA only); ``fused=True`` updates them all in one
kernel. zoo's trainer and ``zoo bench`` build Adam through ``zoo.devices.fused_optimizer``.
In one process, alternating, on two copies of one model with the same weights and batch:
a training step as ``zoo bench --mode train`` times it (zero_grad, forward, cross-entropy,
backward, Adam step), and the Adam step alone. Medians of ``--repeats`` rounds of at least
``--min-time`` seconds; MFU as ``zoo bench`` computes it (3x forward FLOPs over the fp32
matmul peak at the same thread count).

    python benchmarks/fused_adam.py [--models mlp_relu mlpmixer_p4] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F
from _results import record, save, timing_options
from torch.utils.flop_counter import FlopCounterMode

import zoo
from zoo.analysis.peak import peak_flops
from zoo.devices import fused_optimizer
from zoo.env import describe, load_average

BATCH, SHAPE = 128, (1, 28, 28)  # Fashion-MNIST, as in table1 and issue 14's measurements


def _timed(fn: Any, min_time: float) -> float:
    """Seconds per call of ``fn``, over at least 2 calls and ``min_time`` seconds."""
    calls, start = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - start < min_time:
        fn()
        calls += 1
    return (time.perf_counter() - start) / calls


def measure(name: str, repeats: int, min_time: float) -> dict[str, Any]:
    torch.manual_seed(0)
    base = zoo.create(name, num_classes=10, in_chans=SHAPE[0], img_size=SHAPE[1]).train()
    x, y = torch.randn(BATCH, *SHAPE), torch.randint(0, 10, (BATCH,))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        base(x)
    forward = counter.get_total_flops()
    runs: dict[str, dict[str, list[float]]] = {}
    setups = {}
    for kind in ("default", "fused"):
        model = copy.deepcopy(base)
        opt = (
            torch.optim.Adam(model.parameters(), lr=1e-3)
            if kind == "default"
            else fused_optimizer(torch.optim.Adam, model.parameters(), lr=1e-3)
        )

        def step(model: torch.nn.Module = model, opt: torch.optim.Optimizer = opt) -> None:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()

        step()  # allocates gradients and Adam's state
        setups[kind] = (step, opt)
        runs[kind] = {"step_s": [], "adam_s": []}
    for _ in range(repeats):
        for kind, (step, opt) in setups.items():
            runs[kind]["step_s"].append(_timed(step, min_time))
            runs[kind]["adam_s"].append(_timed(opt.step, min_time))  # gradients kept from step
    peak = peak_flops("cpu", "fp32")["peak_flops_per_s"]
    out: dict[str, Any] = {"model": name, "forward_flops": forward, "peak_flops_per_s": peak}
    for kind, times in runs.items():
        step_s = statistics.median(times["step_s"])
        out[kind] = {
            "images_per_s": BATCH / step_s,
            "step_ms": step_s * 1e3,
            "adam_step_ms": statistics.median(times["adam_s"]) * 1e3,
            "mfu": 3 * forward / step_s / peak,
            "all_step_ms": [t * 1e3 for t in times["step_s"]],
        }
    out["speedup"] = out["fused"]["images_per_s"] / out["default"]["images_per_s"]
    return out


def _markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Fused vs default Adam (training step on CPU)",
        "",
        f"{result['date']}; {describe(result['env'], result['load_average'])} Batch "
        f"{BATCH} at {'x'.join(map(str, SHAPE))}, fp32, {result['threads']} thread(s); "
        f"{result['repeats']} rounds of >= {result['min_time']:g} s each, alternating, median.",
        "",
        "| model | Adam | img/s | step ms | Adam step ms | MFU |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in result["models"]:
        for kind in ("default", "fused"):
            r = row[kind]
            lines.append(
                f"| {row['model']} | {kind} | {r['images_per_s']:,.0f} | {r['step_ms']:.2f} | "
                f"{r['adam_step_ms']:.2f} | {r['mfu']:.0%} |"
            )
    lines += [
        "",
        "Training step speed-up, fused / default: "
        + ", ".join(f"{r['model']} **{r['speedup']:.2f}x**" for r in result["models"])
        + ". default = torch's for-loop Adam (what zoo used before); fused = "
        "`torch.optim.Adam(fused=True)`, what `build_optimizer` and `zoo bench` use now.",
        "",
        result["note"],
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mlp_relu", "mlpmixer_p4"])
    timing_options(parser, threads=1, repeats=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = load_average()
    rows = [measure(m, args.repeats, args.min_time) for m in args.models]
    result = record("fused_adam", args, load_before, models=rows)
    save(args.out, "fused_adam", result, _markdown(result))
    for row in rows:
        before, after = row["default"], row["fused"]
        print(
            f"{row['model']:>14}: default {before['images_per_s']:8,.0f} img/s, "
            f"fused {after['images_per_s']:8,.0f} img/s ({row['speedup']:.2f}x); "
            f"Adam step {before['adam_step_ms']:.2f} -> {after['adam_step_ms']:.2f} ms"
        )


if __name__ == "__main__":
    main()
