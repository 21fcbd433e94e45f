"""Sweeps: every point of a recipe's grid trained into its own run directory.

A sweep directory holds the un-expanded ``recipe.yaml``, one run directory per point
(named by its values, e.g. ``optim.lr=0.1``) and ``sweep.json``, an index rebuilt from the
point directories after every point, so shards of one sweep (``--shard i/n``) running at
the same time into the same directory converge on a complete index.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo._io import atomic_write_json, atomic_write_text
from zoo.checkpoint import CHECKPOINT_DIR, JSON_NAME
from zoo.errors import RunError, TrainingError
from zoo.train import (
    Progress,
    TrainingInterrupted,
    claim_run_dir,
    default_run_dir,
    fit,
    resume_recipe,
)

if TYPE_CHECKING:
    from zoo.recipe import Recipe

__all__ = ["run_sweep", "write_sweep_index"]

log = logging.getLogger(__name__)


def run_sweep(
    recipe: Recipe | None,
    out_dir: str | Path | None,
    *,
    resume: str | Path | None,
    device: str | None,
    force: bool,
    progress: Progress | Sequence[Progress] | None,
    shard: tuple[int, int] | None,
) -> Path:
    from zoo.recipe import expand_sweep, shard_points

    if resume is not None:
        root = Path(resume)
        recipe = resume_recipe(root, recipe)
    else:
        assert recipe is not None
        root = _claim_sweep_root(recipe, out_dir, force, shard)
    points = expand_sweep(recipe)
    mine = shard_points(points, *shard) if shard else points
    failed: dict[int, str] = {}
    write_sweep_index(root, recipe, points, failed)
    for point in mine:
        point_dir = root / point.name
        if resume is not None and (point_dir / "summary.json").is_file():
            log.info("sweep point %s is done; skipping", point.name)
            continue
        resumable = resume is not None and (point_dir / CHECKPOINT_DIR / JSON_NAME).is_file()
        log.info("sweep point %d/%d: %s", point.index + 1, len(points), point.name)
        try:
            fit(
                point.recipe,
                point_dir,
                resume=point_dir if resumable else None,
                device=device,
                force=force or resume is not None,  # a resumed sweep restarts unfinished points
                progress=progress,
                sweep_values=dict(point.values),
            )
        except TrainingInterrupted:
            write_sweep_index(root, recipe, points, failed)
            raise
        except TrainingError as e:  # one diverging point must not end the sweep
            failed[point.index] = str(e)
            log.error("sweep point %s failed: %s", point.name, e)
        write_sweep_index(root, recipe, points, failed)
    return root


def _claim_sweep_root(
    recipe: Recipe, out_dir: str | Path | None, force: bool, shard: tuple[int, int] | None
) -> Path:
    from zoo.recipe import load_recipe

    if shard is not None and shard[1] > 1 and out_dir is None:
        raise RunError(
            "--shard needs --out DIR so that every shard writes into the same sweep directory"
        )
    root = Path(out_dir) if out_dir is not None else default_run_dir(recipe)
    existing = root / "recipe.yaml"
    # Shards of one sweep share the root: an identical recipe.yaml there is expected.
    if existing.is_file() and not force and load_recipe(existing).to_dict() == recipe.to_dict():
        return root
    claim_run_dir(root, force)
    atomic_write_text(existing, recipe.to_yaml())
    return root


def write_sweep_index(
    root: Path, recipe: Recipe, points: Sequence[Any], failed: Mapping[int, str]
) -> None:
    """Rebuild sweep.json from the point directories on disk (so shards writing the same
    index converge) plus this process's failures."""
    previous: dict[int, dict[str, Any]] = {}
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        old = json.loads((root / "sweep.json").read_text(encoding="utf-8"))
        previous = {row["index"]: row for row in old["points"]}
    rows = []
    for point in points:
        point_dir = root / point.name
        summary = None
        with contextlib.suppress(OSError, ValueError):
            summary = json.loads((point_dir / "summary.json").read_text(encoding="utf-8"))
        row: dict[str, Any] = {
            "index": point.index,
            "name": point.name,
            "values": dict(point.values),
            "run_dir": point_dir.name,
        }
        if summary is not None:
            row.update(status="done", summary=summary)
        elif point.index in failed or previous.get(point.index, {}).get("status") == "failed":
            error = failed.get(point.index) or previous[point.index].get("error")
            row.update(status="failed", summary=None, error=error)
        else:
            row.update(status="pending", summary=None)
        rows.append(row)
    keys = list(recipe.sweep or {})
    atomic_write_json(root / "sweep.json", {"name": recipe.name, "keys": keys, "points": rows})
