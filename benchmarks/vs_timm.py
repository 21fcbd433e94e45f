"""zoo against its peers, side by side in one process.

1. zoo's ``mlpmixer_p4`` against timm's ``MlpMixer`` built with the same configuration
   (32x32x3, patch 4, embed 256, 4 blocks, mlp_ratio (0.5, 4.0), 10 classes). zoo uses
   timm's module names, so each model's state dict loads strictly into the other; the
   outputs on the same input are compared.
2. zoo's ``resnet18`` against a torchvision-style reference: torchvision's resnet18 with a
   3x3 stride-1 conv1, maxpool = Identity and a 10-class fc. Same check.
3. Throughput ratio zoo / reference (inference and training step), measured in alternating
   rounds with zoo.analysis.bench, medians over the rounds, with each model's MFU (achieved
   FLOP/s / the machine's matmul peak; a training step counts 3x the forward FLOPs).
4. Cold start: ``import zoo; zoo.create("mlpmixer_p4")`` against ``import timm`` + timm's
   ``MlpMixer(<same configuration>)`` (timm's ``mixer_*`` builders pin patch, width and depth,
   so ``timm.create_model`` cannot build it) in fresh subprocesses, alternating, median wall
   time (target: zoo at most 0.6x timm).

    python benchmarks/vs_timm.py        # writes benchmarks/results/vs_timm.{md,json}
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import zoo
from zoo._io import atomic_write_json, atomic_write_text
from zoo.analysis.bench import measure
from zoo.env import environment

MIXER_CFG = {
    "num_classes": 10,
    "img_size": 32,
    "in_chans": 3,
    "patch_size": 4,
    "embed_dim": 256,
    "num_blocks": 4,
    "mlp_ratio": (0.5, 4.0),
}
COLD = {
    "zoo": "import zoo; zoo.create('mlpmixer_p4')",
    # timm's registered mixer builders pin patch_size / embed_dim / num_blocks, so
    # create_model cannot build this configuration; the class is what create_model calls.
    "timm": (
        "import timm; from timm.models.mlp_mixer import MlpMixer; MlpMixer(num_classes=10, "
        "img_size=32, patch_size=4, embed_dim=256, num_blocks=4, mlp_ratio=(0.5, 4.0))"
    ),
}


def timm_mixer() -> nn.Module:
    from timm.models.mlp_mixer import MlpMixer

    return MlpMixer(**MIXER_CFG)  # type: ignore[arg-type]


def torchvision_resnet18() -> nn.Module:
    from torchvision.models import resnet18

    model = resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()  # type: ignore[assignment]
    return model


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def equivalence(ours: nn.Module, ref: nn.Module) -> dict[str, Any]:
    """Parameter counts, strict state-dict loading both ways, and output difference."""
    result: dict[str, Any] = {"params_zoo": _params(ours), "params_ref": _params(ref)}
    ref.load_state_dict(ours.state_dict(), strict=True)  # raises on any key/shape mismatch
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ours.eval()
    ref.eval()
    with torch.inference_mode():
        diff = (ours(x) - ref(x)).abs().max().item()
    result.update(state_dicts_load_strictly=True, max_abs_output_diff=diff)
    return result


def throughput(
    ours: nn.Module, ref: nn.Module, batch: int, rounds: int, min_time: float, threads: int | None
) -> dict[str, Any]:
    """Median images/s and MFU over alternating rounds, per mode; ratio zoo / reference."""
    out: dict[str, Any] = {"batch_size": batch, "rounds": rounds}
    for mode in ("inference", "train"):
        speeds: dict[str, list[float]] = {"zoo": [], "ref": []}
        mfus: dict[str, list[float]] = {"zoo": [], "ref": []}
        achieved: dict[str, list[float]] = {"zoo": [], "ref": []}
        peak = 0.0
        for _ in range(rounds):
            for key, model in (("zoo", ours), ("ref", ref)):
                rec = measure(
                    model, batch, mode=mode, min_time=min_time, min_reps=3, threads=threads
                )
                speeds[key].append(rec.images_per_s)
                mfus[key].append(rec.mfu)
                achieved[key].append(rec.achieved_flops_per_s)
                peak = rec.peak_flops_per_s
        zoo_ips, ref_ips = statistics.median(speeds["zoo"]), statistics.median(speeds["ref"])
        out[mode] = {
            "zoo_images_per_s": zoo_ips,
            "ref_images_per_s": ref_ips,
            "ratio": zoo_ips / ref_ips,
            "zoo_achieved_flops_per_s": statistics.median(achieved["zoo"]),
            "ref_achieved_flops_per_s": statistics.median(achieved["ref"]),
            "peak_flops_per_s": peak,
            "zoo_mfu": statistics.median(mfus["zoo"]),
            "ref_mfu": statistics.median(mfus["ref"]),
            "all_rounds": speeds,
        }
    return out


def cold_start(repeats: int) -> dict[str, Any]:
    """Wall time of a fresh interpreter doing the import + create, alternating zoo / timm.
    ``inner`` is measured inside the process (import + create only)."""
    probe = "import time; t = time.perf_counter(); {code}; print(time.perf_counter() - t)"
    times: dict[str, dict[str, list[float]]] = {k: {"wall": [], "inner": []} for k in COLD}
    for _ in range(repeats):
        for key, code in COLD.items():
            start = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-c", probe.format(code=code)],
                capture_output=True,
                text=True,
                check=True,
            )
            times[key]["wall"].append(time.perf_counter() - start)
            times[key]["inner"].append(float(done.stdout.split()[-1]))
    med = {k: {m: statistics.median(v) for m, v in t.items()} for k, t in times.items()}
    return {
        "repeats": repeats,
        "median_s": med,
        "ratio_wall": med["zoo"]["wall"] / med["timm"]["wall"],
        "ratio_inner": med["zoo"]["inner"] / med["timm"]["inner"],
        "all": times,
    }


def _markdown(res: dict[str, Any]) -> str:
    env = res["env"]
    lines = [
        "# zoo vs timm / torchvision",
        "",
        f"{env['device_name']} ({env['device']}), {env['threads']} threads, torch "
        f"{env['torch']}, zoo {env['zoo_version']} ({env['git_sha']}). {res['note']}",
        "",
        "| pair | params zoo | params ref | state dicts load both ways | max abs output diff "
        "| inference img/s zoo / ref (ratio) | train img/s zoo / ref (ratio) "
        "| train MFU zoo / ref |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, pair in res["pairs"].items():
        eq, tp = pair["equivalence"], pair["throughput"]
        cells = [
            f"{tp[m]['zoo_images_per_s']:,.0f} / {tp[m]['ref_images_per_s']:,.0f} "
            f"({tp[m]['ratio']:.2f}x)"
            for m in ("inference", "train")
        ]
        lines.append(
            f"| {name} | {eq['params_zoo']:,} | {eq['params_ref']:,} "
            f"| {'yes (strict)' if eq['state_dicts_load_strictly'] else 'no'} "
            f"| {eq['max_abs_output_diff']:.2e} | {cells[0]} | {cells[1]} "
            f"| {tp['train']['zoo_mfu']:.1%} / {tp['train']['ref_mfu']:.1%} |"
        )
    cold = res["cold_start"]
    med = cold["median_s"]
    lines += [
        "",
        "Throughput: zoo.analysis.bench, batch "
        + ", ".join(f"{n} {p['throughput']['batch_size']}" for n, p in res["pairs"].items())
        + f"; {res['rounds']} alternating rounds, median images/s per model. MFU = "
        "achieved FLOP/s (3x forward FLOPs x img/s for a training step) / the fp32 matmul "
        "peak (zoo.analysis.peak).",
        "",
        f"## Cold start (fresh subprocess, {cold['repeats']} alternating repeats, medians)",
        "",
        "| | process wall time | import + create (inside the process) |",
        "|---|---|---|",
        f"| `{COLD['zoo']}` | {med['zoo']['wall']:.2f} s | {med['zoo']['inner']:.2f} s |",
        f"| `{COLD['timm']}` | {med['timm']['wall']:.2f} s | {med['timm']['inner']:.2f} s |",
        f"| ratio zoo / timm (target <= 0.6) | {cold['ratio_wall']:.2f} "
        f"| {cold['ratio_inner']:.2f} |",
        "",
        f"Command: `{shlex.join(['python', *res['command']])}` ({res['wall_s']:.0f} s in all).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-time", type=float, default=1.0)
    parser.add_argument("--mixer-batch", type=int, default=128)
    parser.add_argument("--resnet-batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cold-repeats", type=int, default=5)
    parser.add_argument("--note", default="")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "vs_timm")
    args = parser.parse_args()
    start = time.perf_counter()
    pairs = {}
    for name, ours, ref, batch in (
        ("mlpmixer_p4 vs timm MlpMixer", zoo.create("mlpmixer_p4"), timm_mixer(), args.mixer_batch),
        (
            "resnet18 vs torchvision",
            zoo.create("resnet18"),
            torchvision_resnet18(),
            args.resnet_batch,
        ),
    ):
        print(name, "...", file=sys.stderr, flush=True)
        pairs[name] = {
            "equivalence": equivalence(ours, ref),
            "throughput": throughput(ours, ref, batch, args.rounds, args.min_time, args.threads),
        }
    print("cold start ...", file=sys.stderr, flush=True)
    res = {
        "command": sys.argv,
        "env": environment("cpu")
        if args.threads is None
        else {**environment("cpu"), "threads": args.threads},
        "note": args.note,
        "rounds": args.rounds,
        "pairs": pairs,
        "cold_start": cold_start(args.cold_repeats),
    }
    res["wall_s"] = time.perf_counter() - start
    atomic_write_json(args.out.with_suffix(".json"), res)
    atomic_write_text(args.out.with_suffix(".md"), _markdown(res))
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
