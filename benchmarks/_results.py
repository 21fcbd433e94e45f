"""What a side-by-side benchmark records next to its numbers, and where: when it ran, on
what, under what load; JSON (the data) and markdown (the table) in ``benchmarks/results/``.

Imported by the scripts beside it (``python benchmarks/NAME.py`` puts this folder first on
``sys.path``).
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from zoo._io import atomic_write_json, atomic_write_text
from zoo.env import environment, load_average

RESULTS = Path(__file__).parent / "results"
SHARED = "A shared machine: compare the load average with the CPU count."


def timing_options(parser: argparse.ArgumentParser, *, threads: int, repeats: int) -> None:
    """``--threads``, ``--repeats``, ``--min-time``, ``--out`` and ``--note``."""
    parser.add_argument("--threads", type=int, default=threads)
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--min-time", type=float, default=0.5, help="Seconds per round.")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--note", default="", help="Recorded with the results.")


def record(
    benchmark: str, args: argparse.Namespace, load_before: Any, **fields: Any
) -> dict[str, Any]:
    """``fields`` with the :func:`timing_options` settings, the date, the environment, the
    load average before (measured by the caller when it started) and now, and ``--note``
    after the shared-machine caveat."""
    return {
        "benchmark": benchmark,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "threads": args.threads,
        "repeats": args.repeats,
        "min_time": args.min_time,
        **fields,
        "env": environment("cpu"),
        "load_average": {"before": load_before, "after": load_average()},
        "note": f"{SHARED} {args.note}".strip(),
    }


def save(out: Path, name: str, result: dict[str, Any], markdown: str) -> None:
    """``out/NAME.json`` and ``out/NAME.md``, each written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / f"{name}.json", result)
    atomic_write_text(out / f"{name}.md", markdown)
