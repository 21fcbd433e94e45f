"""ImageFolder pipeline: zoo's decode-once, cached, batched pipeline vs torchvision's.

Fashion-MNIST's 60,000 training images are written once as 28x28 grayscale PNGs into an
ImageFolder (``train/<class>/<index>.png``). Then, in one process, alternating:

1. **Warm-cache epoch.** zoo: ``zoo.data.imagefolder.build`` (reading the cached uint8 tensor)
   then one epoch of ``zoo.data.datasets.batches`` with ``AugmentConfig(hflip=True,
   crop_scale=(0.8, 1.0), crop_ratio=(0.9, 1.1))``, batch 128, shuffled, 1 torch thread.
   torchvision: ``datasets.ImageFolder`` (PIL loader, converted to "L") with
   ``RandomResizedCrop(28, scale=(0.8, 1.0), ratio=(0.9, 1.1))`` + ``RandomHorizontalFlip()`` +
   ``ToTensor()`` + ``Normalize`` through ``DataLoader(batch_size=128, shuffle=True,
   num_workers=2)``. Images/s over the whole epoch (worker start-up included, as a user pays
   it). Target: zoo >= 5x.
2. **First, uncached decode.** zoo: ``imagefolder.build`` into an empty cache directory
   (listing, parallel decode, mean/std, cache write). PIL: a loop that lists the same files and
   decodes each with ``Image.open(p).convert("L")`` into one uint8 tensor. Target: zoo >= 2x.

    python benchmarks/imagefolder_pipeline.py [--repeats 2] [--folder /tmp/zoo-fmnist-png]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets, transforms
from torchvision import io as _tv_io  # noqa: F401 -- imported now: import time is not decode time

from zoo._io import atomic_write_json, atomic_write_text
from zoo.data import imagefolder
from zoo.data.augment import AugmentConfig
from zoo.data.catalog import DEBIAN_FASHION_MNIST, FASHION_MNIST_CLASSES
from zoo.data.datasets import batches, read_idx
from zoo.env import environment, load_average

BATCH, SIZE = 128, 28
SCALE, RATIO = (0.8, 1.0), (0.9, 1.1)
MEAN, STD = (0.2860,), (0.3530,)  # Fashion-MNIST's (the torchvision pipeline's constants)


def write_folder(folder: Path) -> int:
    """Fashion-MNIST's training set as PNGs under ``folder/train/<class>/``; kept between
    runs (a ``.complete`` marker says the folder is whole)."""
    marker = folder / ".complete"
    images = read_idx(DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz", ndim=3).numpy()
    labels = read_idx(DEBIAN_FASHION_MNIST / "train-labels-idx1-ubyte.gz", ndim=1).numpy()
    if marker.is_file():
        return len(labels)
    shutil.rmtree(folder, ignore_errors=True)
    names = [c.replace("/", "_").replace(" ", "_") for c in FASHION_MNIST_CLASSES]
    for name in names:
        (folder / "train" / name).mkdir(parents=True)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        Image.fromarray(image).save(folder / "train" / names[label] / f"{i:05d}.png")
    marker.write_text("")
    return len(labels)


def _grey_loader(path: str) -> Image.Image:
    with open(path, "rb") as f:
        return Image.open(f).convert("L")


def torchvision_epoch(folder: Path, seed: int) -> tuple[float, int]:
    transform = transforms.Compose(
        [
            transforms.RandomResizedCrop(SIZE, scale=SCALE, ratio=RATIO),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )
    dataset = datasets.ImageFolder(str(folder / "train"), transform, loader=_grey_loader)
    start = time.perf_counter()
    loader = DataLoader(
        dataset,
        batch_size=BATCH,
        shuffle=True,
        num_workers=2,
        generator=torch.Generator().manual_seed(seed),
    )
    seen = sum(x.shape[0] for x, _ in loader)
    return time.perf_counter() - start, seen


def zoo_epoch(folder: Path, cache: Path, seed: int) -> tuple[float, int, float]:
    """(seconds for build + epoch, images, seconds of the build alone)."""
    start = time.perf_counter()
    data = imagefolder.build(folder, in_chans=1, img_size=SIZE, cache_dir=cache)
    loaded = time.perf_counter() - start
    augment = AugmentConfig(hflip=True, crop_scale=SCALE, crop_ratio=RATIO)
    stream = batches(
        data.train,
        BATCH,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        augment=augment,
        mean=data.mean,
        std=data.std,
    )
    seen = sum(x.shape[0] for x, _ in stream)
    return time.perf_counter() - start, seen, loaded


def zoo_decode(folder: Path, processes: bool = True) -> tuple[float, int]:
    """(seconds, images) of a build into an empty cache; ``processes=False`` decodes in a
    thread pool instead (zoo before it forked worker processes), for comparison."""
    cache = Path(tempfile.mkdtemp(prefix="zoo-bench-cache-"))
    saved = imagefolder._MIN_CHUNKS_FOR_PROCESSES
    if not processes:
        imagefolder._MIN_CHUNKS_FOR_PROCESSES = 1 << 62
    try:
        start = time.perf_counter()
        data = imagefolder.build(folder, in_chans=1, img_size=SIZE, cache_dir=cache)
        seconds = time.perf_counter() - start
    finally:
        imagefolder._MIN_CHUNKS_FOR_PROCESSES = saved
        shutil.rmtree(cache)
    return seconds, len(data.train) + len(data.valid)


def pil_decode(folder: Path) -> tuple[float, int]:
    start = time.perf_counter()
    paths = sorted(str(p) for p in (folder / "train").rglob("*.png"))
    out = torch.empty((len(paths), 1, SIZE, SIZE), dtype=torch.uint8)
    for i, path in enumerate(paths):
        with Image.open(path) as img:
            out[i, 0] = torch.from_numpy(np.array(img.convert("L")))
    return time.perf_counter() - start, len(paths)


def _row(name: str, runs: list[tuple[float, int]]) -> dict[str, Any]:
    rates = [n / s for s, n in runs]
    return {"name": name, "images_per_s": rates, "median": statistics.median(rates)}


def _markdown(result: dict[str, Any]) -> str:
    env, load = result["environment"], result["load_average"]
    lines = [
        "# ImageFolder pipeline: zoo vs torchvision ImageFolder + PIL",
        "",
        f"{result['date']}, torch {env['torch']}, {env['device_name']}, git {env['git_sha']}; "
        f"load average before/after {load['before']} / {load['after']}. "
        f"Data: {result['data']}. {result['repeats']} repeats, alternating, median.",
        "",
    ]
    for key, title in (("epoch", "Warm-cache epoch"), ("decode", "First, uncached decode")):
        part = result[key]
        lines += [
            f"## {title} (target >= {part['target']:g}x)",
            "",
            "| pipeline | median images/s | all repeats |",
            "|---|---:|---|",
        ]
        for row in part["rows"]:
            runs = ", ".join(f"{v:,.0f}" for v in row["images_per_s"])
            lines.append(f"| {row['name']} | {row['median']:,.0f} | {runs} |")
        lines += ["", f"Ratio zoo / baseline: **{part['ratio']:.1f}x**. {part['how']}", ""]
    lines += [result["note"], ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/zoo-fmnist-png"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--note", default="", help="Recorded with the results (e.g. load).")
    args = parser.parse_args()
    count = write_folder(args.folder)
    load_before = load_average()
    torch.set_num_threads(1)  # zoo's batches use 1 thread, as each DataLoader worker does
    zoo_runs, tv_runs, zoo_dec, pil_dec, cache_loads, thread_dec = [], [], [], [], [], []
    with tempfile.TemporaryDirectory(prefix="zoo-bench-warm-") as warm:
        imagefolder.build(args.folder, in_chans=1, img_size=SIZE, cache_dir=Path(warm))
        for r in range(args.repeats):
            seconds, seen, loaded = zoo_epoch(args.folder, Path(warm), r)
            zoo_runs.append((seconds, seen))
            cache_loads.append(loaded)
            tv_runs.append(torchvision_epoch(args.folder, r))
    torch.set_num_threads(min(8, os.cpu_count() or 1))
    threads = min(8, os.cpu_count() or 1)  # imagefolder.build's default
    for _ in range(args.repeats):
        zoo_dec.append(zoo_decode(args.folder))
        pil_dec.append(pil_decode(args.folder))
        thread_dec.append(zoo_decode(args.folder, processes=False))
    epoch_rows = [_row("zoo (cache + batches, 1 thread)", zoo_runs)]
    epoch_rows.append(_row("torchvision ImageFolder + PIL, DataLoader(num_workers=2)", tv_runs))
    name = f"zoo imagefolder.build, empty cache ({threads} worker processes)"
    decode_rows = [_row(name, zoo_dec)]
    decode_rows.append(_row("PIL decode loop (1 thread)", pil_dec))
    decode_rows.append(_row(f"for comparison: zoo in {threads} threads (before)", thread_dec))
    result = {
        "benchmark": "imagefolder_pipeline",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "data": f"Fashion-MNIST train, {count} 28x28 grayscale PNGs, batch {BATCH}",
        "augment": {"hflip": True, "crop_scale": SCALE, "crop_ratio": RATIO},
        "repeats": args.repeats,
        "epoch": {
            "rows": epoch_rows,
            "ratio": epoch_rows[0]["median"] / epoch_rows[1]["median"],
            "target": 5.0,
            "cache_load_seconds": cache_loads,
            "how": (
                "zoo's time includes reading the cache and holding out 10% for validation "
                "(its epoch is the remaining 54,000 images); torchvision's includes starting "
                "its workers. Images/s = images in the epoch / seconds."
            ),
        },
        "decode": {
            "rows": decode_rows,
            "ratio": decode_rows[0]["median"] / decode_rows[1]["median"],
            "target": 2.0,
            "how": (
                "zoo's time includes listing and stat-ing the files, decoding in forked worker "
                "processes, "
                "mean/std and writing the safetensors cache; the PIL loop's includes listing "
                "and decoding into one uint8 tensor."
            ),
        },
        "environment": {**environment("cpu"), "cpu_count": os.cpu_count()},
        "load_average": {"before": load_before, "after": load_average()},
        "note": (
            "Other jobs may share the machine: compare the load average with the CPU count. "
            + args.note
        ).strip(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "imagefolder_pipeline.json", result)
    atomic_write_text(args.out / "imagefolder_pipeline.md", _markdown(result))
    for key in ("epoch", "decode"):
        for row in result[key]["rows"]:
            print(f"{key:>6}: {row['name']:<60} {row['median']:10,.0f} images/s")
        print(f"{key:>6}: ratio {result[key]['ratio']:.1f}x (target {result[key]['target']:g}x)")


if __name__ == "__main__":
    main()
