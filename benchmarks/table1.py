"""Table 1 of the seed's report: parameters and running time per MLP-Mixer patch size.

For mlpmixer_p2/p4/p8/p16 (32x32x3 CIFAR-10 input, embed 256, 4 blocks) in fp32 and bf16:
parameters, forward GFLOPs per image, inference throughput and the time for the 5,000
validation images, training-step throughput and the time for one epoch of 45,000 images,
and how close each runs to the machine's limit: achieved GFLOP/s of a training step (3x the
forward FLOPs x img/s) and MFU, achieved / the matmul peak in the same dtype (zoo.analysis.peak).
mlpmixer_p4 is also measured with channels_last and with torch.compile, to show whether
they help here.

Times are NOT a full pass: each is the image count divided by the median throughput that
zoo.analysis.bench measured over a bounded time (warm-up, then at least --min-time seconds and 3
steps). A training step is forward + backward + Adam; data loading and evaluation are not
included. On a small shared CPU a full epoch of p2 would take far longer than this script.

    python benchmarks/table1.py                        # writes benchmarks/results/table1.{md,json}
    python benchmarks/table1.py --device cuda --min-time 5
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from zoo._io import atomic_write_json, atomic_write_text
from zoo.analysis.bench import BenchRecord, measure

VALID_IMAGES = 5_000
EPOCH_IMAGES = 45_000
MODELS = ("mlpmixer_p2", "mlpmixer_p4", "mlpmixer_p8", "mlpmixer_p16")


def _pair(model: str, args: argparse.Namespace, **options: Any) -> dict[str, Any]:
    common = {
        "device": args.device,
        "min_time": args.min_time,
        "min_reps": 3,
        "warmup": 2,
        "threads": args.threads,
        **options,
    }
    inference = measure(model, args.eval_batch_size, mode="inference", **common)
    train = measure(model, args.batch_size, mode="train", **common)
    return {"inference": inference, "train": train}


def _variants(args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    variants = [(m, {"precision": p}) for m in MODELS for p in args.precisions]
    if args.extras:
        variants += [
            ("mlpmixer_p4", {"precision": "fp32", "channels_last": True}),
            ("mlpmixer_p4", {"precision": "fp32", "compile": True}),
        ]
    return variants


def _options(rec: BenchRecord) -> str:
    parts = [rec.precision]
    if rec.channels_last:
        parts.append("channels_last")
    if rec.compile:
        parts.append(f"compile({rec.compile})")
    return " + ".join(parts)


def _peaks(rows: list[dict[str, Any]]) -> str:
    peaks = {r["train"].precision: r["train"].peak_flops_per_s for r in rows}
    return ", ".join(f"{p} {v / 1e9:,.1f} GFLOP/s" for p, v in sorted(peaks.items()))


def _markdown(rows: list[dict[str, Any]], args: argparse.Namespace, wall: float) -> str:
    env = rows[0]["inference"].env
    base = {r["model"]: r for r in rows if _options(r["inference"]) == "fp32"}
    lines = [
        "# Table 1: MLP-Mixer parameters and running time per patch size",
        "",
        f"Input 3x32x32 (CIFAR-10), embed 256, 4 blocks. Device: {env['device_name']} "
        f"({env['device']}), {env['threads']} threads, torch {env['torch']}, zoo "
        f"{env['zoo_version']} ({env['git_sha']}).",
        "",
        f"**Times are estimated, not measured end to end**: {VALID_IMAGES:,} validation images "
        f"(inference, batch {args.eval_batch_size}) or one epoch of {EPOCH_IMAGES:,} training "
        f"images (forward + backward + Adam, batch {args.batch_size}) divided by the median "
        f"throughput zoo.analysis.bench measured over at least {args.min_time:g} s and 3 steps "
        "after warm-up. Data loading and evaluation are excluded. Spread = IQR of the step time.",
        "",
        "MFU = achieved FLOP/s (forward FLOPs, x3 for a training step, x img/s) / the matmul "
        f"peak measured in the same dtype and thread count: {_peaks(rows)}.",
        "",
        "| model | patch | precision / options | params | GFLOPs/img (fwd) "
        f"| inference img/s | {VALID_IMAGES:,} images | train img/s "
        f"| epoch of {EPOCH_IMAGES:,} | vs fp32 (train) | train GFLOP/s | MFU inf / train "
        "| spread inf / train |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        inf, train = row["inference"], row["train"]
        ref = base.get(row["model"])
        speedup = train.images_per_s / ref["train"].images_per_s if ref else float("nan")
        lines.append(
            f"| {row['model']} | {row['model'].split('_p')[1]} | {_options(inf)} "
            f"| {inf.params:,} | {inf.flops_per_image / 1e9:.3f} | {inf.images_per_s:,.0f} "
            f"| {VALID_IMAGES / inf.images_per_s:,.1f} s | {train.images_per_s:,.0f} "
            f"| {EPOCH_IMAGES / train.images_per_s:,.0f} s | {speedup:.2f}x "
            f"| {train.achieved_flops_per_s / 1e9:,.1f} | {inf.mfu:.1%} / {train.mfu:.1%} "
            f"| {inf.latency_ms_iqr / inf.latency_ms_p50:.0%} / "
            f"{train.latency_ms_iqr / train.latency_ms_p50:.0%} |"
        )
    lines += [
        "",
        f"Command: `{shlex.join(['python', *sys.argv])}` ({wall:.0f} s in all). "
        "On a CPU shared with other jobs the spread column shows how noisy each number is.",
    ]
    if args.note:
        lines += ["", args.note]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--min-time", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--batch-size", type=int, default=128, help="training batch size")
    parser.add_argument("--eval-batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--no-extras", dest="extras", action="store_false")
    parser.add_argument("--note", default="", help="a sentence added under the table")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "table1")
    args = parser.parse_args()
    start = time.perf_counter()
    rows = []
    for model, options in _variants(args):
        print(f"{model} {options} ...", file=sys.stderr, flush=True)
        rows.append({"model": model, **_pair(model, args, **options)})
    wall = time.perf_counter() - start
    atomic_write_text(args.out.with_suffix(".md"), _markdown(rows, args, wall))
    atomic_write_json(
        args.out.with_suffix(".json"),
        {
            "command": sys.argv,
            "wall_s": wall,
            "valid_images": VALID_IMAGES,
            "epoch_images": EPOCH_IMAGES,
            "env": rows[0]["inference"].env,
            "rows": [
                {
                    "model": r["model"],
                    "inference": r["inference"].to_dict(),
                    "train": r["train"].to_dict(),
                }
                for r in rows
            ],
        },
    )
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
