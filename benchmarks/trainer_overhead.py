"""Trainer overhead: zoo's training epoch vs a minimal hand-written loop.

Both loops train the same model from the same initial weights with the same optimizer on
the same in-memory batches (zoo.data.datasets.batches over one uint8 tensor), in the same process,
alternating, repeated; the script reports medians and

    ratio = hand-written epoch time / zoo epoch time        (target: >= 0.95)

zoo's epoch includes what the trainer adds per step: the finite-loss check, running
loss/accuracy, the per-iteration LR schedule, gradient clipping when asked, and the default
progress reporter (log lines).

    python benchmarks/trainer_overhead.py [--repeats 7] [--train-size 4096] [--out FILE]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from zoo import data as zdata
from zoo._io import atomic_write_json, atomic_write_text
from zoo.env import describe, environment, load_average
from zoo.recipe import from_dict
from zoo.training.loop import TrainState, setup_run, train_epoch
from zoo.training.progress import LogProgress

MODELS = ("mlp_relu", "mlpmixer_p8")


def recipe_for(model: str, train_size: int, batch_size: int) -> Any:
    return from_dict(
        {
            "name": f"overhead_{model}",
            "model": {"name": model},
            "data": {
                "dataset": "synthetic",
                "batch_size": batch_size,
                "synthetic": {
                    "num_classes": 10,
                    "in_chans": 3,
                    "img_size": 32,
                    "train_size": train_size,
                    "valid_size": 0,
                    "test_size": 10,
                },
            },
            "optim": {"name": "adam", "lr": 1e-3},
            "epochs": 1000,
            "precision": "fp32",  # as the hand-written twin: auto could pick bf16
        }
    )


def zoo_epoch(run: TrainState, epoch: int) -> float:
    start = time.perf_counter()
    train_epoch(run, epoch, LogProgress())
    return time.perf_counter() - start


def hand_epoch(
    run: TrainState, model: torch.nn.Module, opt: torch.optim.Optimizer, epoch: int
) -> float:
    """What a user writes by hand: forward, loss, backward, step. Same batches as zoo's."""
    d, r = run.data, run.recipe
    generator = torch.Generator().manual_seed(epoch)
    start = time.perf_counter()
    model.train()
    for x, y in zdata.batches(
        d.train,
        r.data.batch_size,
        shuffle=True,
        generator=generator,
        augment=None,
        mean=d.mean,
        std=d.std,
    ):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def measure(model_name: str, repeats: int, train_size: int, batch_size: int) -> dict[str, Any]:
    recipe = recipe_for(model_name, train_size, batch_size)
    bundle = zdata.build("synthetic", synthetic=dict(recipe.data.synthetic), valid_size=0)
    torch.manual_seed(0)
    run = setup_run(recipe, bundle, "cpu", Path("unused"))
    twin = copy.deepcopy(run.model)  # same architecture, same initial weights
    twin_opt = torch.optim.Adam(twin.parameters(), lr=recipe.optim.lr)
    zoo_epoch(run, 0)  # warm-up: allocator, threads, first-call overheads
    hand_epoch(run, twin, twin_opt, 0)
    zoo_s, hand_s = [], []
    for i in range(1, repeats + 1):  # alternate so background load hits both alike
        zoo_s.append(zoo_epoch(run, i))
        hand_s.append(hand_epoch(run, twin, twin_opt, i))
    zoo_med, hand_med = statistics.median(zoo_s), statistics.median(hand_s)
    return {
        "model": model_name,
        "train_size": train_size,
        "batch_size": batch_size,
        "steps_per_epoch": run.steps,
        "repeats": repeats,
        "zoo_epoch_s": zoo_s,
        "hand_epoch_s": hand_s,
        "zoo_median_s": zoo_med,
        "hand_median_s": hand_med,
        "ratio": hand_med / zoo_med,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--train-size", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "trainer_overhead.json"
    )
    parser.add_argument("--note", default="", help="Recorded with the results (e.g. load).")
    args = parser.parse_args()
    load_before = load_average()
    rows = [measure(m, args.repeats, args.train_size, args.batch_size) for m in MODELS]
    for row in rows:
        print(
            f"{row['model']:<12} zoo {row['zoo_median_s']:.3f} s/epoch  hand-written "
            f"{row['hand_median_s']:.3f} s/epoch  ratio {row['ratio']:.3f} (target >= 0.95)"
        )
    result = {
        "benchmark": "trainer_overhead",
        "target": "ratio >= 0.95",
        "results": rows,
        "env": environment("cpu"),
        "load_average": {"before": load_before, "after": load_average()},
        "note": args.note,
    }
    atomic_write_json(args.out, result)
    atomic_write_text(args.out.with_suffix(".md"), markdown(result, args))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


def markdown(result: dict[str, Any], args: argparse.Namespace) -> str:
    env, load = result["env"], result["load_average"]
    lines = [
        "# Trainer overhead: zoo's epoch vs a hand-written loop",
        "",
        f"{describe(env, load)} Same model, initial weights, optimizer (Adam) "
        "and in-memory batches; the two loops alternate within each repeat.",
        "",
        "| model | steps/epoch x batch | zoo s/epoch (median) | hand-written s/epoch (median) "
        "| ratio hand / zoo (target >= 0.95) |",
        "|---|---|---:|---:|---:|",
    ]
    for r in result["results"]:
        lines.append(
            f"| {r['model']} | {r['steps_per_epoch']} x {r['batch_size']} "
            f"| {r['zoo_median_s']:.3f} | {r['hand_median_s']:.3f} | {r['ratio']:.3f} |"
        )
    command = (
        f"python benchmarks/trainer_overhead.py --repeats {args.repeats} "
        f"--train-size {args.train_size} --batch-size {args.batch_size}"
    )
    lines += ["", f"Command: `{command}`. {result['note']}".rstrip(), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
