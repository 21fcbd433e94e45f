"""Data pipeline: zoo's batched tensor augmentation vs the seed's per-sample torchvision one.

Both pipelines produce the same training batches from the same CIFAR-shaped uint8 data
(random pixels, 50,000 x 3 x 32 x 32; the content does not change the cost), batch 128,
shuffled:

- seed:  per-sample PIL ``RandomResizedCrop(32, scale=(0.8, 1.0), ratio=(0.9, 1.1))`` +
  ``RandomHorizontalFlip()`` + ``ToTensor()`` + ``Normalize(mean, std)`` through a
  ``DataLoader`` (``num_workers`` 0 and 2), reading images the way
  ``torchvision.datasets.CIFAR10.__getitem__`` does (``Image.fromarray`` on an HWC array);
- zoo:   ``zoo.data.datasets.batches`` over one uint8 tensor with
  ``zoo.data.augment.AugmentConfig(hflip=True, crop_scale=(0.8, 1.0), crop_ratio=(0.9, 1.1))``.

Each pipeline is timed in the same process, alternating, ``--repeats`` times; a repeat
consumes ``--batches`` batches after ``--warmup`` untimed ones (so DataLoader worker start-up
is not counted). Reported: median images/s and ``ratio = zoo / seed`` for each seed variant
(target: >= 5 against the faster one). zoo runs with 1 torch thread (the headline; each
DataLoader process also uses one) and with 2.

    python benchmarks/data_pipeline.py [--repeats 5] [--batches 40] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from zoo import data as zdata
from zoo._io import atomic_write_json, atomic_write_text
from zoo.data.augment import AugmentConfig
from zoo.env import environment, load_average

N, SIZE, BATCH = 50_000, 32, 128
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # CIFAR-10's
SCALE, RATIO = (0.8, 1.0), (0.9, 1.1)  # the seed's RandomResizedCrop settings
HEADLINE = "zoo, 1 thread(s)"
PIPELINES = (HEADLINE, "zoo, 2 thread(s)", "seed, 0 workers", "seed, 2 workers")


class _SeedDataset(Dataset[tuple[torch.Tensor, int]]):
    """What torchvision.datasets.CIFAR10 does per item: HWC uint8 -> PIL -> transform."""

    def __init__(self, hwc: np.ndarray, labels: np.ndarray) -> None:
        from PIL import Image

        self.to_pil = Image.fromarray
        self.hwc, self.labels = hwc, labels
        self.transform = transforms.Compose(
            [
                transforms.RandomResizedCrop(SIZE, scale=SCALE, ratio=RATIO),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                transforms.Normalize(MEAN, STD),
            ]
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.to_pil(self.hwc[i])), int(self.labels[i])


def _seed_batches(dataset: _SeedDataset, workers: int, seed: int) -> Iterator[Any]:
    loader = DataLoader(
        dataset,
        batch_size=BATCH,
        shuffle=True,
        num_workers=workers,
        generator=torch.Generator().manual_seed(seed),
    )
    return iter(loader)


def _zoo_batches(split: zdata.Split, seed: int) -> Iterator[Any]:
    augment = AugmentConfig(hflip=True, crop_scale=SCALE, crop_ratio=RATIO)
    gen = torch.Generator().manual_seed(seed)
    return zdata.batches(
        split, BATCH, shuffle=True, generator=gen, augment=augment, mean=MEAN, std=STD
    )


def _images_per_s(batches: Iterator[Any], warmup: int, count: int) -> float:
    for _ in range(warmup):
        next(batches)
    start, images = time.perf_counter(), 0
    for _ in range(count):
        x, _ = next(batches)
        images += x.shape[0]
    seconds = time.perf_counter() - start
    del batches  # shuts DataLoader workers down before the next measurement
    return images / seconds


def measure(repeats: int, count: int, warmup: int) -> dict[str, list[float]]:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (N, 3, SIZE, SIZE), generator=gen, dtype=torch.uint8)
    labels = torch.randint(0, 10, (N,), generator=gen)
    split = zdata.Split(images, labels)
    seed_data = _SeedDataset(images.permute(0, 2, 3, 1).contiguous().numpy(), labels.numpy())
    runs: dict[str, list[float]] = {name: [] for name in PIPELINES}
    for r in range(repeats):  # alternate so that load from other processes hits all alike
        for threads in (1, 2):
            torch.set_num_threads(threads)
            batches = _zoo_batches(split, r)
            runs[f"zoo, {threads} thread(s)"].append(_images_per_s(batches, warmup, count))
        torch.set_num_threads(1)  # DataLoader workers use 1 thread each; the main one does too
        for workers in (0, 2):
            batches = _seed_batches(seed_data, workers, r)
            runs[f"seed, {workers} workers"].append(_images_per_s(batches, warmup, count))
    return runs


def _markdown(result: dict[str, Any]) -> str:
    env, rows = result["environment"], result["results"]
    lines = [
        "# Data pipeline: zoo vs the seed's per-sample torchvision pipeline",
        "",
        f"{result['date']}, torch {env['torch']}, {env['device_name']}, "
        f"{env['threads']} torch threads, "
        f"git {env['git_sha']}; load average before/after {result['load_average']['before']} / "
        f"{result['load_average']['after']}. Data: {result['data']}.",
        f"Each repeat times {result['batches_per_repeat']} batches of {BATCH} after "
        f"{result['warmup_batches']} warm-up batches; {result['repeats']} repeats, median.",
        "",
        f"| pipeline | median images/s | all repeats | {HEADLINE} / this |",
        "|---|---:|---|---:|",
    ]
    for name, row in rows.items():
        runs = ", ".join(f"{v:,.0f}" for v in row["images_per_s"])
        lines.append(f"| {name} | {row['median']:,.0f} | {runs} | {row['zoo_speedup']:.1f}x |")
    lines += ["", result["note"], ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, default=40, help="timed batches per repeat")
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches per repeat")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--note", default="", help="Recorded with the results (e.g. load).")
    args = parser.parse_args()
    load_before = load_average()

    runs = measure(args.repeats, args.batches, args.warmup)
    zoo_median = statistics.median(runs[HEADLINE])
    results = {
        name: {
            "images_per_s": values,
            "median": statistics.median(values),
            "zoo_speedup": zoo_median / statistics.median(values),
        }
        for name, values in runs.items()
    }
    env = environment("cpu")
    env["threads"] = "1 (seed pipelines, zoo headline) and 2 (second zoo row)"
    fastest_seed = max(v["median"] for k, v in results.items() if k.startswith("seed"))
    result = {
        "benchmark": "data_pipeline",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "data": f"random uint8 {N} x 3 x {SIZE} x {SIZE} (CIFAR-shaped), batch {BATCH}",
        "augment": {"hflip": True, "crop_scale": SCALE, "crop_ratio": RATIO},
        "repeats": args.repeats,
        "batches_per_repeat": args.batches,
        "warmup_batches": args.warmup,
        "results": results,
        "ratio_vs_fastest_seed": zoo_median / fastest_seed,
        "target": 5.0,
        "environment": env,
        "load_average": {"before": load_before, "after": load_average()},
        "note": (
            "The pipelines alternate within each repeat so that load from other processes "
            "hits all of them alike. The headline ratio uses zoo with 1 torch thread, as many "
            "as each seed DataLoader process uses. " + args.note
        ).strip(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "data_pipeline.json", result)
    atomic_write_text(args.out / "data_pipeline.md", _markdown(result))
    for name, row in results.items():
        print(f"{name:>17}: {row['median']:10,.0f} images/s  (zoo is {row['zoo_speedup']:.1f}x)")
    print(f"ratio zoo / fastest seed pipeline: {result['ratio_vs_fastest_seed']:.1f}x (target 5x)")


if __name__ == "__main__":
    main()
