"""Regularised vs plain MLP-Mixer on Fashion-MNIST at the same wall-clock training budget.

Trains ``recipes/mixer_fmnist_plain.yaml`` and ``recipes/mixer_fmnist_regularised.yaml``
(the same Mixer, patch 4, embed 128, 4 blocks; the second adds flip + crop, random erasing,
CutMix/mixup with label smoothing, stochastic depth, AdamW decay and an EMA that it tests)
in one process on the same data. Each recipe first runs a short probe (``--probe-steps``
batches) to measure its training images/s, then gets as many whole epochs as fit
``--budget`` seconds of training at that rate, so that its schedule (warm-up + cosine) runs
to its end inside the budget rather than being cut off. Reported per recipe: epochs,
measured training seconds, test accuracy (of the weights the recipe tests: best epoch for
plain, EMA for regularised), and the load average, since on a shared machine it moves every
number.

    python benchmarks/regularisation.py [--budget 600] [--threads 1] [--train-subset N]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from zoo._io import atomic_write_json, atomic_write_text
from zoo.env import environment, load_average
from zoo.recipe import load_recipe
from zoo.training.loop import RunOptions, build_data, fit

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ("mixer_fmnist_plain", "mixer_fmnist_regularised")


def _probe(recipe: Any, data: Any, steps: int, tmp: Path) -> float:
    """Training images/s of ``recipe`` over ``steps`` batches (after the first epoch starts)."""
    probe = dataclasses.replace(
        recipe, epochs=1, limit_train_batches=steps, limit_eval_batches=1, name="probe"
    )
    run = fit(probe, RunOptions(out_dir=tmp / f"probe-{recipe.name}", progress=[]), data=data)
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    return float(row["images_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=600.0, help="training seconds each")
    parser.add_argument("--probe-steps", type=int, default=40)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (2 on a busy 2-core machine: ~10x slower)",
    )
    parser.add_argument("--train-subset", type=int, default=None, help="training images")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import zoo.training.loop

    zoo.training.loop.after_run = lambda run_dir, recipe: None  # no curves/card: not timed
    load_before = load_average()
    recipes = [load_recipe(ROOT / "recipes" / f"{name}.yaml") for name in RECIPES]
    recipes = [dataclasses.replace(r, device="cpu") for r in recipes]
    if args.train_subset is not None:
        recipes = [
            dataclasses.replace(r, data=dataclasses.replace(r.data, train_subset=args.train_subset))
            for r in recipes
        ]
    data = build_data(recipes[0], "cpu")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for recipe in recipes:
            rate = _probe(recipe, data, args.probe_steps, tmp)
            epochs = max(1, math.floor(args.budget * rate / len(data.train)))
            start = time.perf_counter()
            run = fit(
                dataclasses.replace(recipe, epochs=epochs),
                RunOptions(out_dir=tmp / recipe.name, progress=[]),
                data=data,
            )
            wall = time.perf_counter() - start
            rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            summary = json.loads((run / "summary.json").read_text())
            results[recipe.name] = {
                "probe_images_per_s": rate,
                "epochs": epochs,
                "train_seconds": sum(r["train_seconds"] for r in rows),
                "wall_seconds": wall,
                "test_acc": summary["test_acc"],
                "test_weights": summary["test_weights"],
                "valid_acc": [r["valid_acc"] for r in rows],
                "valid_acc_ema": [r.get("valid_acc_ema") for r in rows],
                "train_acc": [r["train_acc"] for r in rows],
            }
    record = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "budget_train_seconds": args.budget,
        "threads": args.threads,
        "train_images": len(data.train),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "results": results,
        "env": environment("cpu"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "regularisation.json", record)
    lines = [
        "# Regularised vs plain Mixer on Fashion-MNIST, same training budget",
        "",
        f"{record['date']}; budget {args.budget:.0f} s of training per recipe, "
        f"{len(data.train)} training images, {args.threads} torch thread(s); "
        f"load average before/after {load_before} / "
        f"{record['load_average_after']} (a shared 2-core machine).",
        "",
        "| recipe | epochs | train s | test acc | tested weights | final valid acc |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['epochs']} | {r['train_seconds']:.0f} | {r['test_acc']:.4f} | "
            f"{r['test_weights']} | {r['valid_acc'][-1]:.4f} |"
        )
    atomic_write_text(args.out / "regularisation.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
