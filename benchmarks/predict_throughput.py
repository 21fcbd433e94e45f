"""Predict throughput: ``zoo predict`` vs the usual torchvision script on a folder of PNGs.

The folder holds the 10,000 Fashion-MNIST test images as PNG files, one sub-folder per class
(torchvision's ImageFolder layout). The model is quickstart-shaped (``mlp_relu`` at 1x28x28,
untrained: its weights do not change the cost), saved with ``save_model_files`` and loaded
once. Both pipelines predict top-5 classes of every image, in the same process, alternating,
``--repeats`` times:

- script: ``torchvision.datasets.ImageFolder`` (PIL loader) + ``Grayscale()``,
  ``ToTensor()``, ``Normalize(mean, std)`` + ``DataLoader(batch_size, num_workers=2)`` + a
  ``torch.no_grad()`` loop with softmax and top-k;
- zoo:    :func:`zoo.analysis.predict.predict` with its defaults (workers decode whole
  batches with torchvision.io; the batch is normalised at once in the main process; on CPU
  the model gets the cores the workers leave: 1 worker and 1 torch thread on 2 cores);
- zoo with the script's settings: 2 workers and torch's default threads for the model, to
  separate the decoding path from the choice of workers and threads.

Each timing runs from the folder path to the predictions (listing files and starting
workers included). Reported: median images/s of each and ``ratio = zoo / script`` (target
>= 2), and how often their top-1 classes agree (their preprocessing is the same here:
28x28 grey PNGs need no resizing).

    make data   # Fashion-MNIST from Debian, if /usr/share/datasets/fashion-mnist is missing
    python benchmarks/predict_throughput.py [--repeats 3] [--workdir /tmp/zoo-predict-bench]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

import zoo
from zoo._io import atomic_write_json, atomic_write_text
from zoo.analysis.predict import PredictOptions, predict
from zoo.data.catalog import DEBIAN_FASHION_MNIST, FASHION_MNIST_CLASSES
from zoo.data.datasets import read_idx
from zoo.env import describe, environment, load_average
from zoo.weights.files import save_model_files

MEAN, STD = (0.2860,), (0.3530,)
BATCH, SCRIPT_WORKERS, TOPK = 64, 2, 5


def write_pngs(folder: Path, n: int) -> Path:
    """The first ``n`` Fashion-MNIST test images as PNGs in ImageFolder layout (reused)."""
    root = folder / f"fashion_mnist_test_{n}"
    if root.is_dir() and sum(1 for _ in root.rglob("*.png")) == n:
        return root
    images = read_idx(DEBIAN_FASHION_MNIST / "t10k-images-idx3-ubyte.gz", ndim=3)[:n]
    labels = read_idx(DEBIAN_FASHION_MNIST / "t10k-labels-idx1-ubyte.gz", ndim=1)[:n]
    for c in range(len(FASHION_MNIST_CLASSES)):
        (root / f"{c}").mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(images.numpy(), labels.tolist(), strict=True)):
        Image.fromarray(image).save(root / f"{label}" / f"{i:05d}.png")
    return root


def make_model(folder: Path) -> torch.nn.Module:
    torch.manual_seed(0)
    net = zoo.create("mlp_relu", in_chans=1, img_size=28)
    out = folder / "model"
    save_model_files(
        net, out, input_size=[1, 28, 28], mean=MEAN, std=STD, label_names=FASHION_MNIST_CLASSES
    )
    return zoo.create(str(out)).eval()


def run_script(model: torch.nn.Module, root: Path) -> tuple[float, dict[str, int]]:
    """The usual script; returns (seconds, file name -> top-1 class)."""
    start = time.perf_counter()
    tf = transforms.Compose(
        [transforms.Grayscale(), transforms.ToTensor(), transforms.Normalize(MEAN, STD)]
    )
    folder = datasets.ImageFolder(str(root), transform=tf)
    loader = DataLoader(folder, batch_size=BATCH, shuffle=False, num_workers=SCRIPT_WORKERS)
    rows: list[tuple[list[float], list[int]]] = []
    with torch.no_grad():
        for x, _ in loader:
            probs, idx = model(x).softmax(1).topk(TOPK, dim=1)
            rows += zip(probs.tolist(), idx.tolist(), strict=True)
    seconds = time.perf_counter() - start
    names = [Path(p).name for p, _ in folder.samples]
    return seconds, {name: row[1][0] for name, row in zip(names, rows, strict=True)}


def run_zoo(model: torch.nn.Module, root: Path, **settings: Any) -> tuple[float, dict[str, int]]:
    start = time.perf_counter()
    options = PredictOptions(topk=TOPK, batch_size=BATCH, device="cpu", **settings)
    result = predict(model, [root], options)
    seconds = time.perf_counter() - start
    assert not result.skipped
    return seconds, {Path(p.path).name: p.top[0].index for p in result.predictions}


def run_zoo_matched(model: torch.nn.Module, root: Path) -> tuple[float, dict[str, int]]:
    return run_zoo(model, root, num_workers=SCRIPT_WORKERS, threads=torch.get_num_threads())


def _markdown(result: dict[str, Any]) -> str:
    rows = result["results"]
    lines = [
        "# Predict throughput: `zoo predict` vs the usual torchvision script",
        "",
        f"{result['date']}. {result['environment_line']} Data: {result['data']}.",
        f"Model: {result['model']}. Batch {BATCH}, top-{TOPK}; {result['repeats']} repeats, "
        "alternating, median; each timing from the folder path to the predictions.",
        "",
        "| pipeline | median images/s | all repeats (images/s) | zoo / this |",
        "|---|---:|---|---:|",
    ]
    for name, row in rows.items():
        runs = ", ".join(f"{v:,.0f}" for v in row["images_per_s"])
        lines.append(f"| {name} | {row['median']:,.0f} | {runs} | {row['zoo_speedup']:.2f}x |")
    lines += [
        "",
        f"ratio zoo / script: **{result['ratio']:.2f}x** (target >= {result['target']:.0f}x). "
        f"With the script's workers and threads: {result['ratio_with_the_scripts_settings']:.2f}x. "
        f"Top-1 classes agree on {result['top1_agreement']:.4%} of the images.",
        "",
        result["note"],
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="images (at most 10,000)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "zoo-pb")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--note", default="", help="Recorded with the results (e.g. load).")
    args = parser.parse_args()
    if not (DEBIAN_FASHION_MNIST / "t10k-images-idx3-ubyte.gz").is_file():
        raise SystemExit(f"Fashion-MNIST is not in {DEBIAN_FASHION_MNIST}; run `make data`")

    root = write_pngs(args.workdir, args.n)
    model = make_model(args.workdir)
    load_before = load_average()
    matched = f"zoo predict, {SCRIPT_WORKERS} workers, {torch.get_num_threads()} threads"
    names = {
        "zoo predict": run_zoo,
        matched: run_zoo_matched,
        f"script, {SCRIPT_WORKERS} workers": run_script,
    }
    runs: dict[str, list[float]] = {name: [] for name in names}
    tops: dict[str, dict[str, int]] = {}
    for _ in range(args.repeats):  # alternate so that load from other processes hits both
        for name, fn in names.items():
            seconds, tops[name] = fn(model, root)
            runs[name].append(args.n / seconds)
    zoo_median = statistics.median(runs["zoo predict"])
    results = {
        name: {
            "images_per_s": values,
            "median": statistics.median(values),
            "zoo_speedup": zoo_median / statistics.median(values),
        }
        for name, values in runs.items()
    }
    script = tops[f"script, {SCRIPT_WORKERS} workers"]
    agree = sum(tops["zoo predict"][k] == v for k, v in script.items()) / len(script)
    env = environment("cpu")
    load = {"before": load_before, "after": load_average()}
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    zoo_workers = max(1, min(4, (cpus or 1) - 1))
    zoo_threads = max(1, (cpus or 1) - zoo_workers)
    result = {
        "benchmark": "predict_throughput",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "data": f"{args.n} Fashion-MNIST test images as 28x28 grey PNGs in class folders",
        "model": "mlp_relu (1x28x28, 10 classes, untrained), loaded with zoo.create",
        "batch_size": BATCH,
        "topk": TOPK,
        "workers": {"zoo predict": zoo_workers, matched: SCRIPT_WORKERS, "script": SCRIPT_WORKERS},
        "model_threads": {
            "zoo predict": zoo_threads,
            matched: torch.get_num_threads(),
            "script": torch.get_num_threads(),
        },
        "ratio_with_the_scripts_settings": results[matched]["median"]
        / results[f"script, {SCRIPT_WORKERS} workers"]["median"],
        "repeats": args.repeats,
        "results": results,
        "ratio": zoo_median / results[f"script, {SCRIPT_WORKERS} workers"]["median"],
        "target": 2.0,
        "top1_agreement": agree,
        "environment": env,
        "load_average": load,
        "environment_line": describe(env, load),
        "note": (
            f"zoo predict runs with its defaults: {zoo_workers} DataLoader worker(s) (up to 4, "
            f"leaving one CPU) and {zoo_threads} torch thread(s) for the model (the CPUs the "
            f"workers leave); the script with num_workers={SCRIPT_WORKERS} and torch's default "
            f"{torch.get_num_threads()} threads, as does the middle row. " + args.note
        ).strip(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "predict_throughput.json", result)
    atomic_write_text(args.out / "predict_throughput.md", _markdown(result))
    for name, row in results.items():
        print(f"{name:>20}: {row['median']:10,.0f} images/s  (zoo is {row['zoo_speedup']:.2f}x)")
    print(f"ratio zoo / script: {result['ratio']:.2f}x (target 2x); top-1 agreement {agree:.4%}")
    print(
        f"with the script's workers and threads: {result['ratio_with_the_scripts_settings']:.2f}x"
    )


if __name__ == "__main__":
    main()
