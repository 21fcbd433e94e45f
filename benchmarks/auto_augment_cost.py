"""The cost of per-image augmentation policies and random erasing in zoo's batch pipeline.

torchvision's v2 RandAugment / TrivialAugmentWide / AutoAugment draw one set of operations
per call, so zoo calls them once per image (zoo.data.autoaugment); everything else in the
pipeline is batched. This measures what that loop costs: images/s of
``zoo.data.datasets.batches`` (flip + pad-4 crop, normalisation) with and without
``data.augment.auto`` (each policy) and random erasing (timm's RandomErasing on the
normalised batch, as the trainer applies it), batch 128, on synthetic uint8 data shaped
like Fashion-MNIST (1 x 28 x 28) and CIFAR-10 (3 x 32 x 32). Pixel content does not change
the cost. Each configuration is timed ``--repeats`` times (median), alternating, after one
warm-up batch, with ``--threads`` torch threads; the load average is recorded, since on a
shared machine it moves every number.

    python benchmarks/auto_augment_cost.py [--repeats 3] [--batches 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from zoo._io import atomic_write_json, atomic_write_text
from zoo.data.augment import AugmentConfig
from zoo.data.datasets import Split, batches
from zoo.env import environment, load_average

BATCH = 128
SHAPES = {"fashion_mnist 1x28x28": (1, 28), "cifar10 3x32x32": (3, 32)}
CONFIGS: dict[str, dict[str, Any]] = {
    "flip + crop (batched)": {},
    "+ rand-m9-mstd0.5": {"auto": "rand-m9-mstd0.5"},
    "+ trivial": {"auto": "trivial"},
    "+ autoaugment": {"auto": "autoaugment"},
    "+ erase 0.25 pixel": {"erase": True},
}


def _rate(split: Split, extra: dict[str, Any], n_batches: int, seed: int) -> float:
    from timm.data.random_erasing import RandomErasing

    config = AugmentConfig(hflip=True, crop_padding=4, auto=extra.get("auto"))
    erase = RandomErasing(probability=0.25, mode="pixel", device="cpu") if extra else None
    generator = torch.Generator().manual_seed(seed)
    stream = batches(
        split, BATCH, shuffle=True, generator=generator, augment=config, mean=(0.5,), std=(0.25,)
    )
    next(stream)  # warm-up: first-call costs (transform construction, allocations)
    start = time.perf_counter()
    for x, _ in itertools.islice(stream, n_batches):
        if extra.get("erase") and erase is not None:
            erase(x)
    return n_batches * BATCH / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = load_average()
    results: dict[str, dict[str, float]] = {}
    for shape_name, (chans, size) in SHAPES.items():
        images = torch.randint(0, 256, (4096, chans, size, size), dtype=torch.uint8)
        split = Split(images, torch.zeros(4096, dtype=torch.int64))
        runs: dict[str, list[float]] = {name: [] for name in CONFIGS}
        for repeat in range(args.repeats):
            for name, extra in CONFIGS.items():
                runs[name].append(_rate(split, extra, args.batches, repeat))
        results[shape_name] = {name: statistics.median(r) for name, r in runs.items()}
    record = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "threads": args.threads,
        "batch": BATCH,
        "batches": args.batches,
        "repeats": args.repeats,
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "images_per_s": results,
        "env": environment("cpu"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "auto_augment_cost.json", record)
    lines = [
        "# Per-image augmentation policies: pipeline images/s",
        "",
        f"{record['date']}, {args.threads} torch threads, batch {BATCH}, median of "
        f"{args.repeats} x {args.batches} batches; load average before/after: "
        f"{load_before} / {record['load_average_after']} (a shared machine: absolute numbers "
        "move with it, the ratios less).",
        "",
        "| pipeline | " + " | ".join(SHAPES) + " |",
        "|---|" + "---:|" * len(SHAPES),
    ]
    for name in CONFIGS:
        cells = []
        for shape_name in SHAPES:
            rate, base = results[shape_name][name], results[shape_name]["flip + crop (batched)"]
            cells.append(f"{rate:,.0f} ({rate / base:.2f}x)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    atomic_write_text(args.out / "auto_augment_cost.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
