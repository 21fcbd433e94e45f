"""zoo's CPU dropout vs torch's: what a training step of a model with dropout gains.

torch's CPU dropout draws one Mersenne Twister number per element; zoo's ``Dropout``
(``zoo.models._layers``) takes 16 bits of a 64-bit draw per element. In one process,
alternating, on copies of one model with the same weights: a training step timed by
``zoo.analysis.bench.measure`` (what ``zoo bench --mode train`` runs: zero_grad, forward,
cross-entropy, backward, fused Adam), with torch's ``nn.Dropout`` swapped in ("torch"),
with zoo's ("zoo"), and with dropout off ("none", the cost without dropout). Medians over
``--repeats`` rounds of each round's median step (at least ``--min-time`` seconds of steps
after warm-up), in fp32 and in bf16 autocast.

    python benchmarks/cpu_dropout.py [--threads 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import copy
import statistics
from typing import Any

import torch
from _results import record, save, timing_options
from torch import nn

import zoo
from zoo.analysis.bench import measure
from zoo.env import describe, load_average
from zoo.models._layers import Dropout

BATCH, SHAPE = 128, (1, 28, 28)  # Fashion-MNIST, as in table1 and issue 14's measurements
MODELS = {  # label -> (builder, arguments)
    "mixer p7, drop 0.1 (PROFILE=cpu's best Mixer)": (
        "mlpmixer_p4",
        {"patch_size": 7, "embed_dim": 256, "num_blocks": 4, "drop_rate": 0.1},
    ),
    "mixer p4, drop 0.4 (the seed's best, 4 blocks)": (
        "mlpmixer_p4",
        {"embed_dim": 256, "num_blocks": 4, "drop_rate": 0.4},
    ),
    "mlp_relu, drop 0.2": ("mlp_relu", {"drop_rate": 0.2}),
}


def _with_torch_dropout(model: nn.Module) -> nn.Module:
    for module in model.modules():
        for name, child in module.named_children():
            if isinstance(child, Dropout):
                setattr(module, name, nn.Dropout(child.p))
    return model


def compare(
    builder: str, args: dict[str, Any], precision: str, repeats: int, min_time: float
) -> dict[str, Any]:
    """The three variants of one model, timed by ``zoo.analysis.bench.measure`` from the same
    weights in alternating rounds; per variant the median over rounds of each round's median
    step."""
    torch.manual_seed(0)
    base = zoo.create(builder, num_classes=10, in_chans=SHAPE[0], img_size=SHAPE[1], **args)
    models = {
        "torch": _with_torch_dropout(copy.deepcopy(base)),
        "zoo": copy.deepcopy(base),
        "none": zoo.create(
            builder, num_classes=10, in_chans=SHAPE[0], img_size=SHAPE[1],
            **{**args, "drop_rate": 0.0},
        ),
    }  # fmt: skip
    models["none"].load_state_dict(base.state_dict())
    times: dict[str, list[float]] = {kind: [] for kind in models}
    for _ in range(repeats):
        for kind, model in models.items():
            # A fresh copy each round, as `zoo bench` times a fresh model: measure() trains the
            # module it is given with a new Adam, and restarting Adam on weights it already
            # moved drove the MLP's fp32 step from 5 to 20 ms over 5 rounds (denormals).
            fresh = copy.deepcopy(model)
            record = measure(fresh, BATCH, mode="train", precision=precision, min_time=min_time)
            times[kind].append(record.latency_ms_p50)
    out: dict[str, Any] = {"builder": builder, "args": args, "precision": precision}
    for kind, runs in times.items():
        step_ms = statistics.median(runs)
        out[kind] = {"images_per_s": BATCH / step_ms * 1e3, "step_ms": step_ms, "all_step_ms": runs}
    out["speedup"] = out["zoo"]["images_per_s"] / out["torch"]["images_per_s"]
    return out


def _markdown(result: dict[str, Any]) -> str:
    lines = [
        "# zoo's CPU dropout vs torch's (training step)",
        "",
        f"{result['date']}; {describe(result['env'], result['load_average'])} Batch "
        f"{BATCH} at {'x'.join(map(str, SHAPE))}, {result['threads']} thread(s); "
        f"{result['repeats']} alternating rounds of >= {result['min_time']:g} s of steps "
        "timed by `zoo.analysis.bench.measure`; the median over rounds of each round's "
        "median step.",
        "",
        "| model | precision | torch's dropout img/s | zoo's dropout img/s | no dropout img/s "
        "| zoo / torch |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in result["models"]:
        lines.append(
            f"| {row['model']} | {row['precision']} | {row['torch']['images_per_s']:,.0f} "
            f"| {row['zoo']['images_per_s']:,.0f} | {row['none']['images_per_s']:,.0f} "
            f"| **{row['speedup']:.2f}x** |"
        )
    lines += [
        "",
        "torch = `nn.Dropout` (what the built-ins used before); zoo = "
        "`zoo.models._layers.Dropout`, what they use now; none = the same model with "
        "`drop_rate=0`, the step without any dropout.",
        "",
        result["note"],
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    timing_options(parser, threads=2, repeats=5)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = load_average()
    rows = [
        {"model": label, **compare(*MODELS[label], precision, args.repeats, args.min_time)}
        for label in MODELS
        for precision in args.precisions
    ]
    result = record("cpu_dropout", args, load_before, models=rows)
    save(args.out, "cpu_dropout", result, _markdown(result))
    for row in rows:
        print(
            f"{row['model']:>48} {row['precision']}: torch {row['torch']['images_per_s']:7,.0f}"
            f" zoo {row['zoo']['images_per_s']:7,.0f} none {row['none']['images_per_s']:7,.0f}"
            f" img/s ({row['speedup']:.2f}x)"
        )


if __name__ == "__main__":
    main()
