"""Launching a recipe: train it, or every point of its sweep (:func:`run_recipe`, what
``zoo train`` calls), or say what that would do without training (:func:`plan`, what
``zoo train --dry-run`` prints).
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo.devices import autocast_dtype, select_device
from zoo.errors import RecipeError, RunError
from zoo.runs.lock import command_line, run_lock
from zoo.training import distributed
from zoo.training.loop import (
    RunOptions,
    TrainingInterrupted,
    build_data,
    fit,
    model_for,
    steps_per_epoch,
)
from zoo.training.optim import build_optimizer
from zoo.training.rundir import default_run_dir

if TYPE_CHECKING:
    from zoo.data.datasets import DataBundle
    from zoo.recipe import Recipe

__all__ = ["plan", "run_recipe"]

log = logging.getLogger("zoo.training.loop")  # the trainer's logger, shown by the CLI


def run_recipe(recipe: Recipe | None, options: RunOptions = RunOptions()) -> Path:
    """Train a recipe, or every point of its sweep; return the run or sweep directory.
    ``recipe`` may be None when resuming. SIGTERM (a batch scheduler's stop) is handled like
    Ctrl-C: the last complete epoch stays checkpointed and the error says how to continue."""
    with _sigterm_as_interrupt():
        return _run_recipe(recipe, options)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # KeyboardInterrupt
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_recipe(recipe: Recipe | None, options: RunOptions) -> Path:
    resume = options.resume
    if resume is not None and options.out_dir is not None:
        raise RunError(
            f"--out cannot be combined with --resume: a run continues in its own directory "
            f"({resume}); drop --out (copy the result elsewhere with `zoo export {resume} --out "
            "DIR` once it is done)"
        )
    is_sweep = (recipe is not None and bool(recipe.sweep)) or (
        resume is not None and (Path(resume) / "sweep.json").is_file()
    )
    if is_sweep:
        from zoo.training.sweep import run_sweep

        return run_sweep(recipe, options)
    _check_shard(options.shard, False, options.out_dir)
    target = resume if resume is not None else options.out_dir
    if target is None or not distributed.from_env().is_main:
        return fit(recipe, options)  # a fresh timestamped directory, or rank 0 holds the lock
    with run_lock(target, "train into", command=command_line()):
        if resume is not None:
            recipe, options = _resume_plan(recipe, options)
        try:
            return fit(recipe, options)
        except KeyboardInterrupt:  # outside the epochs (loading, test, finishing): say how on
            raise TrainingInterrupted(
                f"stopped by the user; continue with `zoo train --resume {target}` (it redoes "
                "what was interrupted)"
            ) from None


def _resume_plan(recipe: Recipe | None, options: RunOptions) -> tuple[Recipe, RunOptions]:
    """What ``--resume RUN`` does: continue from the checkpoint, refusing fewer ``epochs``
    than it holds; with no complete checkpoint (killed during the first epoch), start RUN over
    from its own recorded recipe, and say so."""
    import dataclasses

    from zoo.runs import files
    from zoo.training.checkpoint import CHECKPOINT_DIR, JSON_NAME
    from zoo.training.rundir import resume_recipe

    run_dir = Path(options.resume or ".")
    recipe = resume_recipe(run_dir, recipe)
    record = files.read_json(run_dir / CHECKPOINT_DIR / JSON_NAME, missing_ok=True)
    if record is None:
        log.warning(
            "%s has no complete checkpoint (it was stopped during its first epoch); starting "
            "it over from its recorded recipe",
            run_dir,
        )
        return recipe, dataclasses.replace(options, resume=None, out_dir=run_dir, force=True)
    done = record.get("epoch")
    if isinstance(done, int) and recipe.epochs < done:
        raise RunError(
            f"cannot resume {run_dir} with epochs={recipe.epochs}: it has already trained "
            f"{done} epochs; resume with --set epochs=N for N >= {done}, or start a new run"
        )
    files.read_metrics(run_dir)  # a damaged line is refused before anything is written
    if recipe.to_yaml() != (files.read_recipe_text(run_dir) or ""):
        files.write_recipe(run_dir, recipe.to_yaml())  # the recipe it now trains to, honestly
    return recipe, options


def _check_shard(shard: tuple[int, int] | None, is_sweep: bool, out_dir: Any) -> None:
    if shard is None or shard[1] <= 1:
        return
    if not is_sweep:
        raise RecipeError("--shard splits a sweep, but this recipe has no `sweep:` section")
    if out_dir is None:
        raise RunError(
            "--shard needs --out DIR so that every shard writes into the same sweep directory"
        )


def plan(
    recipe: Recipe,
    out_dir: str | Path | None = None,
    *,
    device: str | None = None,
    shard: tuple[int, int] | None = None,
    world_size: int = 1,
) -> dict[str, Any]:
    """What ``run_recipe`` would do, without training: resolved recipe, device, data shapes,
    each run's model and parameter count, and the run directories (``world_size``: in that
    many torchrun processes)."""
    import torch

    from zoo.recipe import expand_sweep, shard_points

    dev = select_device(device or recipe.device)
    autocast_dtype(recipe.precision, dev.split(":")[0])
    root = Path(out_dir) if out_dir is not None else default_run_dir(recipe)
    points = expand_sweep(recipe) if recipe.sweep else []
    _check_shard(shard, bool(points), out_dir)  # --dry-run refuses what the run refuses
    if shard is not None and points:
        points = shard_points(points, *shard)
    runs = [(p.recipe, root / p.name) for p in points] or [(recipe, root)]
    bundles: dict[str, DataBundle] = {}
    planned = []
    for run_recipe_, run_dir in runs:
        key = json.dumps(run_recipe_.to_dict()["data"], sort_keys=True, default=str)
        if key not in bundles:
            bundles[key] = build_data(run_recipe_, "cpu")
        data = bundles[key]
        with torch.device("meta"):  # shapes and counts only: allocates nothing
            model = model_for(run_recipe_, data)
        build_optimizer(model, run_recipe_.optim)
        planned.append(
            {
                "run_dir": str(run_dir),
                "model": run_recipe_.model.name,
                "params": sum(p.numel() for p in model.parameters()),
                "dataset": data.name,
                "input": [data.in_chans, data.img_size, data.img_size],
                "splits": {s: len(getattr(data, s)) for s in ("train", "valid", "test")},
                "steps_per_epoch": steps_per_epoch(run_recipe_, len(data.train), world_size),
                "epochs": run_recipe_.epochs,
                "batch_size_per_process": distributed.rank_batch_size(
                    run_recipe_.data.batch_size, run_recipe_.data.batch_size_mode, world_size
                ),
            }
        )
    return {
        "recipe": recipe.to_yaml(),
        "device": dev,
        "sweep_dir": str(root) if points else None,
        "world_size": world_size,
        "runs": planned,
    }
