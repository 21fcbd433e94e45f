"""Patch size vs test accuracy over several seeds: on Fashion-MNIST, is the seed's CIFAR-10
conclusion ("the largest patch is the least accurate") a real difference, or seed noise?

Trains ``recipes/mixer_patch.yaml`` on Fashion-MNIST at patch 4, 7 and 14, one sweep per
seed (``zoo train`` in a subprocess, the recipe's augmentation, cosine schedule; a seed whose
points are all done under ``--out`` is not trained again), then reads every finished point
under ``--out`` and the ``--collect`` directories. It reports test accuracy per patch and
seed, the mean and sample standard deviation per patch, and each seed's ranking. Points whose
recipes differ other than in seed and patch size are refused: they would not be comparable.

    python benchmarks/patch_size_seeds.py --seeds 42 1 2 [--epochs 15] [--out runs/patch_seeds]
    python benchmarks/patch_size_seeds.py --seeds 42 1 2 --collect-only --collect DIR [DIR ...]

A 15-epoch sweep of the three patch sizes takes about 45 min on 2 quiet Xeon cores (bf16).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from _results import RESULTS, save

from zoo.env import describe, environment, load_average

ROOT = Path(__file__).resolve().parents[1]
VARYING = ("seed", "name", "sweep")  # besides model.args.patch_size


def train_command(seed: int, epochs: int, patches: Sequence[int], out: Path) -> list[str]:
    grid = ", ".join(map(str, patches))
    sets = {
        "data.dataset": "fashion_mnist",
        "epochs": epochs,
        "schedule.name": "cosine",
        "seed": seed,
        "sweep": f"{{model.args.patch_size: [{grid}]}}",
    }
    command = [sys.executable, "-m", "zoo", "train", "recipes/mixer_patch.yaml", "--out", str(out)]
    for key, value in sets.items():
        command += ["--set", f"{key}={value}"]
    return command


def _comparable(recipe: dict[str, Any]) -> dict[str, Any]:
    """The recipe without what a point of this study may vary."""
    same = {k: v for k, v in recipe.items() if k not in VARYING}
    same["model"] = {**same["model"], "args": dict(same["model"].get("args") or {})}
    same["model"]["args"].pop("patch_size", None)
    return same


def collect(directories: Iterable[Path]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Every finished point (a directory with summary.json and recipe.yaml) under
    ``directories`` (its seed, patch size, test accuracy and wall time), and the settings
    they share (their recipe without seed and patch size)."""
    points: list[dict[str, Any]] = []
    reference: dict[str, Any] | None = None
    for directory in directories:
        for summary_path in sorted(directory.rglob("summary.json")):
            run = summary_path.parent
            recipe = yaml.safe_load((run / "recipe.yaml").read_text())
            config = json.loads((run / "config.json").read_text())
            summary = json.loads(summary_path.read_text())
            same = _comparable(recipe)
            if reference is None:
                reference = same
            elif same != reference:
                changed = sorted(k for k in same.keys() | reference.keys()
                                 if same.get(k) != reference.get(k))  # fmt: skip
                raise SystemExit(f"{run}: its recipe differs from the first point's in {changed}")
            points.append(
                {
                    "run": str(run),
                    "seed": recipe["seed"],
                    "patch_size": config["model_args"]["patch_size"],
                    "test_acc": summary["test_acc"],
                    "best_valid_acc": summary["best_valid_acc"],
                    "wall_time_s": summary["wall_time_s"],
                    "precision": (summary.get("precision") or {}).get("chosen"),
                    "trained_on": (summary.get("env") or {}).get("device_name"),
                    "git_sha": (summary.get("env") or {}).get("git_sha"),
                }
            )
    return points, reference


def aggregate(points: Sequence[dict[str, Any]], seeds: Sequence[int]) -> dict[str, Any]:
    table: dict[int, dict[int, float]] = {}  # patch -> seed -> test accuracy
    for point in points:
        if point["seed"] in seeds:
            seen = table.setdefault(point["patch_size"], {})
            if point["seed"] in seen:
                raise SystemExit(f"two finished points for patch {point['patch_size']}, seed "
                                 f"{point['seed']}: collect each once")  # fmt: skip
            seen[point["seed"]] = point["test_acc"]
    patches = sorted(table)
    complete = [s for s in seeds if all(s in table[p] for p in patches)]
    per_patch = {
        p: {
            "mean": statistics.mean(table[p][s] for s in complete) if complete else None,
            "stdev": statistics.stdev(table[p][s] for s in complete) if len(complete) > 1 else None,
        }
        for p in patches
    }
    rankings = {
        s: sorted(patches, key=lambda p, s=s: -table[p][s]) for s in complete
    }  # most accurate first
    largest = max(patches) if patches else None
    return {
        "test_acc": {p: table[p] for p in patches},
        "per_patch": per_patch,
        "complete_seeds": complete,
        "rankings": rankings,
        "largest_least_accurate": {s: rankings[s][-1] == largest for s in complete},
    }


def _markdown(result: dict[str, Any]) -> str:
    agg, shared = result["aggregate"], result["shared_recipe"]
    patches = list(agg["per_patch"])
    seeds = agg["complete_seeds"]
    optim, model_args = shared["optim"], shared["model"]["args"]
    precisions = sorted({str(p["precision"]) for p in result["points"]})
    lines = [
        "# Mixer patch size vs test accuracy over seeds (Fashion-MNIST)",
        "",
        f"{result['date']}; {describe(result['env'], result['load_average'])}",
        "",
        f"`{result['command']}`: `recipes/mixer_patch.yaml` ({shared['model']['name']}, "
        f"{json.dumps(model_args) if model_args else 'its default arguments'}) on "
        f"{shared['data']['dataset']}, {shared['epochs']} epochs, {shared['schedule']['name']} "
        f"schedule, augmentation {json.dumps(shared['data']['augment'])}, {optim['name']} lr "
        f"{optim['lr']:g}, weight decay {optim['weight_decay']:g}, precision "
        f"{'/'.join(precisions)}; one sweep per seed. Test accuracy (%):",
        "",
        "| patch (tokens) | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | std |",
        "|---|" + "---:|" * (len(seeds) + 2),
    ]
    for p in patches:
        stats = agg["per_patch"][p]
        cells = [f"{100 * agg['test_acc'][p][s]:.2f}" for s in seeds]
        std = f"{100 * stats['stdev']:.2f}" if stats["stdev"] is not None else "-"
        mean = f"{100 * stats['mean']:.2f}" if stats["mean"] is not None else "-"
        lines.append(f"| {p} ({(28 // p) ** 2}) | " + " | ".join(cells) + f" | {mean} | {std} |")
    lines += ["", "Ranking per seed (most accurate first):", ""]
    for s in seeds:
        order = " > ".join(str(p) for p in agg["rankings"][s])
        least = "yes" if agg["largest_least_accurate"][s] else "no"
        lines.append(f"- seed {s}: {order}; largest patch least accurate: {least}")
    shas = sorted({str(p["git_sha"])[:7] for p in result["points"]})
    machines = sorted({str(p["trained_on"]) for p in result["points"]})
    lines += [
        "",
        f"Trained on {'; '.join(machines)} at git {', '.join(shas)}; the line above describes "
        "where this summary was written.",
        "",
        result["note"],
        "",
    ]
    return "\n".join(lines)


def _recorded_command(args: argparse.Namespace) -> str:
    """The command line that reproduces these results (the note is printed on its own)."""
    words = ["python benchmarks/patch_size_seeds.py", "--seeds", *map(str, args.seeds)]
    words += ["--epochs", str(args.epochs), "--patches", *map(str, args.patches)]
    words += ["--collect-only"] if args.collect_only else ["--out", str(args.out)]
    words += ["--collect", *map(str, args.collect)] if args.collect else []
    return " ".join(words)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--patches", type=int, nargs="+", default=[4, 7, 14])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "patch_seeds")
    parser.add_argument("--collect", type=Path, nargs="*", default=[],
                        help="Also read finished points under these directories.")  # fmt: skip
    parser.add_argument("--collect-only", action="store_true", help="Train nothing.")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--note", default="", help="Recorded with the results.")
    args = parser.parse_args()
    load_before = load_average()
    if not args.collect_only:
        for seed in args.seeds:
            out = args.out / f"seed_{seed}"
            done = {p["patch_size"] for p in collect([out])[0]} if out.exists() else set()
            if set(args.patches) <= done:
                continue
            command = (
                [sys.executable, "-m", "zoo", "train", "--resume", str(out)]
                if (out / "recipe.yaml").exists()  # a sweep stopped part-way
                else train_command(seed, args.epochs, args.patches, out)
            )
            subprocess.run(command, cwd=ROOT, check=True)
    directories = [d for d in [args.out, *args.collect] if d.exists()]
    points, shared = collect(directories)
    if shared is None:
        raise SystemExit(f"no finished points under {', '.join(map(str, directories))}")
    result = {
        "benchmark": "patch_size_seeds",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": _recorded_command(args),
        "shared_recipe": shared,
        "points": points,
        "aggregate": aggregate(points, args.seeds),
        "env": environment("cpu"),
        "load_average": {"before": load_before, "after": load_average()},
        "note": args.note,
    }
    save(args.results, "patch_size_seeds", result, _markdown(result))
    print(_markdown(result))


if __name__ == "__main__":
    main()
