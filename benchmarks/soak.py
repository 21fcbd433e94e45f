"""Soak: many short training runs in one process must not grow memory or open files.

Runs N complete runs one after another through the trainer's library API
(:func:`zoo.training.loop.fit`: synthetic data, a tiny MLP, checkpoints, export, curves and model
card, the same path as ``zoo train``), each into a fresh run directory, and records after each
run the resident memory (VmRSS from /proc/self/status) and the number of open file
descriptors (/proc/self/fd). It reports the mean of the first 10 runs against the last 10.
The first runs pay one-off costs (imports, matplotlib fonts, allocator pools), so growth is
judged between the two windows, not from run 1.

    python benchmarks/soak.py [--runs 50] [--out benchmarks/results/soak]

Linux only (reads /proc).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from zoo.env import environment
from zoo.recipe import from_dict
from zoo.training.loop import RunOptions, fit

WINDOW = 10
# Growth we call "none": a few MiB of allocator noise, and not a single leaked descriptor.
RSS_TOLERANCE_MIB = 8.0
FD_TOLERANCE = 0.0


def recipe(index: int) -> Any:
    return from_dict(
        {
            "name": f"soak{index}",
            "model": {"name": "mlp_relu", "args": {"hidden_sizes": [32, 16]}},
            "data": {
                "dataset": "synthetic",
                "batch_size": 32,
                "synthetic": {
                    "num_classes": 4,
                    "in_chans": 1,
                    "img_size": 8,
                    "train_size": 256,
                    "valid_size": 64,
                    "test_size": 64,
                    "seed": index,
                },
            },
            "optim": {"name": "adam", "lr": 0.01},
            "schedule": {"name": "cosine"},
            "epochs": 2,
            "seed": index,
        },
        source="<soak>",
    )


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024  # reported in kB
    raise RuntimeError("no VmRSS in /proc/self/status")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def soak(runs: int, workdir: Path) -> list[dict[str, Any]]:
    rows = []
    for i in range(runs):
        start = time.perf_counter()
        run_dir = fit(
            recipe(i), RunOptions(out_dir=workdir / f"run{i:03d}")
        )  # default progress: log lines
        seconds = time.perf_counter() - start
        shutil.rmtree(run_dir)  # disk use is not what is measured
        gc.collect()
        row = {"run": i + 1, "rss_mib": rss_mib(), "open_fds": open_fds(), "seconds": seconds}
        rows.append(row)
        logging.info(
            "run %d: %.1f MiB, %d fds, %.2f s", i + 1, row["rss_mib"], row["open_fds"], seconds
        )
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    first, last = rows[:WINDOW], rows[-WINDOW:]
    out: dict[str, Any] = {}
    for key in ("rss_mib", "open_fds"):
        a = statistics.fmean(r[key] for r in first)
        b = statistics.fmean(r[key] for r in last)
        out[key] = {"first10_mean": a, "last10_mean": b, "growth": b - a}
    out["rss_ok"] = out["rss_mib"]["growth"] <= RSS_TOLERANCE_MIB
    out["fds_ok"] = out["open_fds"]["growth"] <= FD_TOLERANCE
    return out


def markdown(result: dict[str, Any]) -> str:
    s, env = result["summary"], result["env"]
    lines = [
        f"# Soak: {result['runs']} sequential training runs in one process",
        "",
        "Command: `python benchmarks/soak.py --runs "
        f"{result['runs']}` ({result['wall_time_s']:.0f} s wall). Each run: "
        "zoo.training.loop.fit on synthetic 1x8x8 data (256 train / 64 valid / 64 test), "
        "mlp_relu [32, 16], 2 epochs, with checkpoints, export, curves.png and model card; "
        "the run directory is deleted after each run.",
        "",
        "| measure | mean of runs 1-10 | mean of last 10 | growth | verdict |",
        "|---|---:|---:|---:|---|",
    ]
    for key, unit, tol, ok in (
        ("rss_mib", "MiB", f"<= {RSS_TOLERANCE_MIB:g} MiB", s["rss_ok"]),
        ("open_fds", "", "0", s["fds_ok"]),
    ):
        m = s[key]
        lines.append(
            f"| {key} | {m['first10_mean']:.1f} {unit} | {m['last10_mean']:.1f} {unit} | "
            f"{m['growth']:+.1f} {unit} | {'ok' if ok else 'GROWS'} (tolerance {tol}) |"
        )
    lines += ["", "Per run (RSS MiB / open fds):", ""]
    lines.append(
        ", ".join(f"{r['run']}: {r['rss_mib']:.1f}/{r['open_fds']}" for r in result["rows"])
    )
    lines += ["", "Environment: " + ", ".join(f"{k} {v}" for k, v in env.items()), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "soak"))
    args = parser.parse_args()
    if args.runs < 2 * WINDOW:
        parser.error(f"--runs must be at least {2 * WINDOW}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("zoo.training.loop", "zoo.training.sweep", "matplotlib"):
        logging.getLogger(name).setLevel(logging.WARNING)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="zoo-soak-") as tmp:
        rows = soak(args.runs, Path(tmp))
    result = {
        "runs": args.runs,
        "wall_time_s": time.perf_counter() - started,
        "summary": summarise(rows),
        "rows": rows,
        "env": environment("cpu"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))


if __name__ == "__main__":
    main()
