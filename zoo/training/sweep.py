"""Sweeps: every point of a recipe's grid trained into its own run directory.

A sweep directory holds the un-expanded ``recipe.yaml``, one run directory per point
(named by its values, e.g. ``optim.lr=0.1``) and ``sweep.json``, an index rebuilt from the
point directories after every point, so shards of one sweep (``--shard i/n``) running at
the same time into the same directory converge on a complete index.
:func:`sweep_status` reads the point directories themselves (``zoo sweep status DIR``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo._io import atomic_write_json, atomic_write_text
from zoo.errors import RunError, TrainingError
from zoo.runs import files
from zoo.runs.files import claim_run_dir
from zoo.runs.lock import command_line, run_lock
from zoo.training.checkpoint import CHECKPOINT_DIR, JSON_NAME
from zoo.training.loop import RunOptions, TrainingInterrupted, fit, resume_command, stopped
from zoo.training.rundir import AfterRunError, after_run, default_run_dir, resume_recipe

if TYPE_CHECKING:
    from zoo.recipe import Recipe

__all__ = ["STATUSES", "outside_points", "run_sweep", "sweep_status", "write_sweep_index"]

STATUSES = ("done", "running", "failed", "missing")

log = logging.getLogger(__name__)


def run_sweep(recipe: Recipe | None, options: RunOptions) -> Path:
    """Train every point of ``recipe``'s sweep (or ``options.shard``'s slice of them), each
    into its own run directory under the sweep root; return the root."""
    resume, device, force, shard = options.resume, options.device, options.force, options.shard
    from zoo.devices import select_device
    from zoo.recipe import expand_sweep, shard_points
    from zoo.training import distributed

    if resume is not None:
        root = Path(resume)
        recipe = resume_recipe(root, recipe)
    else:
        assert recipe is not None
    # Under torchrun every point trains on all processes; rank 0 alone writes the index.
    place = distributed.from_env()
    if place.enabled:
        place, _ = distributed.setup(select_device(device or recipe.device))
    if resume is None:
        root = _claim_sweep_root(recipe, options.out_dir, force, shard, claim=place.is_main)
        root = distributed.broadcast_object(root)  # rank 0's default timestamp
    points = expand_sweep(recipe)
    mine = shard_points(points, *shard) if shard else points
    failed: dict[int, str] = {}
    unfinished: list[str] = []
    continue_with = resume_command(root, device, place.world_size)  # what a stop names
    if shard is not None and shard[1] > 1:
        continue_with += f" --shard {shard[0]}/{shard[1]}"
    write_index = write_sweep_index if place.is_main else _no_index
    write_index(root, recipe, points, failed)
    for point in mine:
        point_dir = root / point.name
        if resume is not None and (point_dir / files.SUMMARY_NAME).is_file():
            log.info("sweep point %s is done; skipping", point.name)
            if place.is_main and not (point_dir / files.CARD_NAME).is_file():
                try:  # its finishing (curves, card, publish) was interrupted: redo it
                    after_run(point_dir, point.recipe)
                except AfterRunError as e:
                    unfinished.append(str(e))
            continue
        resumable = resume is not None and (point_dir / CHECKPOINT_DIR / JSON_NAME).is_file()
        log.info("sweep point %d/%d: %s", point.index + 1, len(points), point.name)
        try:
            point_options = dataclasses.replace(
                options,
                out_dir=point_dir,
                resume=point_dir if resumable else None,
                force=force or resume is not None,  # a resumed sweep restarts unfinished points
                shard=None,
                continue_with=continue_with,
            )
            with run_lock(point_dir, command=command_line()) if place.is_main else _nothing():
                fit(point.recipe, point_options, sweep_values=dict(point.values))
        except TrainingInterrupted:
            write_index(root, recipe, points, failed)
            raise
        except KeyboardInterrupt as e:  # while the point was tested or finished
            write_index(root, recipe, points, failed)
            kept = f"sweep point {point.name} was interrupted, and --resume redoes it"
            raise stopped(e, kept, continue_with) from None
        except TrainingError as e:  # one diverging point must not end the sweep
            failed[point.index] = str(e)
            log.error("sweep point %s failed: %s", point.name, e)
        except AfterRunError as e:  # trained; its figure, card or push failed: say so at the end
            unfinished.append(str(e))
        write_index(root, recipe, points, failed)
    if unfinished:
        raise AfterRunError(f"{len(unfinished)} sweep point(s): " + " | ".join(unfinished))
    return root


@contextlib.contextmanager
def _nothing() -> Iterator[None]:
    yield


def _no_index(root: Path, recipe: Recipe, points: Sequence[Any], failed: Mapping[int, str]) -> None:
    """What ranks other than 0 write: nothing."""


def shared_root(root: Path, recipe: Recipe, force: bool, shard: tuple[int, int] | None) -> bool:
    """Whether ``root`` already holds this sweep, to be shared rather than claimed. Shards of
    one sweep share the root: an identical recipe.yaml there is expected. With --force a
    shard replaces its own points only (each is claimed, under its lock, when it trains): the
    other shards' points are never removed from under them. Checks only; writes nothing."""
    from zoo.recipe import load_recipe

    existing = root / files.RECIPE_NAME
    sharded = shard is not None and shard[1] > 1
    if not existing.is_file() or (force and not sharded):
        return False
    if load_recipe(existing).to_dict() == recipe.to_dict():
        return True
    if sharded and force:
        raise RunError(
            f"{root} holds a sweep trained with another recipe: --force with --shard replaces "
            "only this shard's points, which would mix two recipes in one sweep; overwrite the "
            "whole sweep with --force and no --shard, or choose another --out"
        )
    return False


def _claim_sweep_root(
    recipe: Recipe,
    out_dir: str | Path | None,
    force: bool,
    shard: tuple[int, int] | None,
    *,
    claim: bool = True,
) -> Path:
    if shard is not None and shard[1] > 1 and out_dir is None:
        raise RunError(
            "--shard needs --out DIR so that every shard writes into the same sweep directory"
        )
    root = Path(out_dir) if out_dir is not None else default_run_dir(recipe)
    if not claim:
        return root
    if shared_root(root, recipe, force, shard):
        return root
    claim_run_dir(root, force)
    atomic_write_text(root / files.RECIPE_NAME, recipe.to_yaml())
    return root


def write_sweep_index(
    root: Path, recipe: Recipe, points: Sequence[Any], failed: Mapping[int, str]
) -> None:
    """Rebuild sweep.json from the point directories on disk (so shards writing the same
    index converge) plus this process's failures."""
    previous: dict[int, dict[str, Any]] = {}
    with contextlib.suppress(RunError, KeyError, TypeError):
        old = files.read_json(root / files.SWEEP_INDEX_NAME)
        previous = {row["index"]: row for row in old["points"]}
    rows = []
    for point in points:
        point_dir = root / point.name
        summary = None
        with contextlib.suppress(RunError):
            summary = files.read_json(point_dir / files.SUMMARY_NAME)
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
    atomic_write_json(
        root / files.SWEEP_INDEX_NAME, {"name": recipe.name, "keys": keys, "points": rows}
    )


def sweep_status(root: str | Path, now: float | None = None) -> list[dict[str, Any]]:
    """Every point of the sweep in ``root``, read from its directory: ``done`` (summary.json),
    ``failed`` (the index records its error and it has no summary), ``running`` (started:
    it has files but no summary; ``epoch`` is its last completed epoch, ``updated_s_ago``
    tells a live run from a killed one) or ``missing`` (not started by any shard)."""
    root = Path(root)
    points = _sweep_points(root)
    index: dict[int, dict[str, Any]] = {}
    with contextlib.suppress(RunError, KeyError, TypeError):
        old = files.read_json(root / files.SWEEP_INDEX_NAME)
        index = {row["index"]: row for row in old["points"]}
    now = time.time() if now is None else now
    return [_point_status(root / p.name, p, index.get(p.index, {}), now) for p in points]


def outside_points(root: str | Path) -> list[str]:
    """Directories in the sweep root that are not points of its recipe (copied in, or left
    from another grid): no shard trains them and no report reads them."""
    root = Path(root)
    names = {p.name for p in _sweep_points(root)}
    return sorted(
        entry.name
        for entry in root.iterdir()
        if entry.is_dir() and entry.name not in names and not entry.name.startswith(".")
    )


def _sweep_points(root: Path) -> list[Any]:
    from zoo.recipe import expand_sweep, load_recipe

    if not (root / files.RECIPE_NAME).is_file():
        raise RunError(
            f"{root} holds no recipe.yaml, so it is not a zoo sweep directory; give the --out "
            "directory of `zoo train SWEEP`"
        )
    recipe = load_recipe(root / files.RECIPE_NAME)
    if not recipe.sweep:
        raise RunError(f"{root} is a single run, not a sweep (its recipe has no `sweep:`)")
    return list(expand_sweep(recipe))


def _point_status(
    directory: Path, point: Any, indexed: Mapping[str, Any], now: float
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "index": point.index,
        "name": point.name,
        "values": dict(point.values),
        "run_dir": str(directory),
        "epochs": point.recipe.epochs,
        "epoch": None,
        "test_acc": None,
        "updated_s_ago": None,
        "error": None,
    }
    paths = (directory, *directory.glob("*"), *directory.glob(f"{CHECKPOINT_DIR}/*"))
    times = []
    for path in paths:
        with contextlib.suppress(OSError):  # a temporary file renamed meanwhile
            times.append(path.stat().st_mtime)
    if times:
        row["updated_s_ago"] = max(0.0, now - max(times))
    summary = None
    with contextlib.suppress(RunError):
        summary = files.read_json(directory / files.SUMMARY_NAME)
    if isinstance(summary, dict):
        row.update(status="done", epoch=summary.get("epochs"), test_acc=summary.get("test_acc"))
        return row
    row["epoch"] = _last_epoch(directory) if times else None
    if indexed.get("status") == "failed":
        row.update(status="failed", error=indexed.get("error"))
    elif (directory / files.RECIPE_NAME).is_file() or (directory / CHECKPOINT_DIR).is_dir():
        row["status"] = "running"
    else:
        row["status"] = "missing"
    return row


def _last_epoch(directory: Path) -> int:
    """The last epoch the point's checkpoint holds (0: none finished yet)."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError, RunError):
        record = files.read_json(directory / CHECKPOINT_DIR / JSON_NAME)  # never a FIFO
        return int(record["epoch"])
    return 0
