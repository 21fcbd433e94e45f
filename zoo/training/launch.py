"""Launching a recipe: train it, or every point of its sweep (:func:`run_recipe`, what
``zoo train`` calls), or say what that would do without training (:func:`plan`, what
``zoo train --dry-run`` prints).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo.devices import check_precision, select_device
from zoo.errors import RecipeError, RunError
from zoo.runs.lock import command_line, run_lock
from zoo.training import distributed
from zoo.training.loop import (
    RunOptions,
    Terminated,
    TrainingInterrupted,
    build_data,
    fit,
    model_for,
    resume_command,
    steps_per_epoch,
    stopped,
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
    ``recipe`` may be None when resuming.

    Stopping, at any phase: Ctrl-C and SIGTERM (a batch scheduler's stop) end in one
    :class:`~zoo.training.loop.TrainingInterrupted` that says what is kept and the exact
    command that continues (exit 130 for Ctrl-C, 143 for SIGTERM). During the epochs the
    trainer stops at a safe point (:func:`~zoo.training.loop.fit` says which and why they
    differ); before and after them (loading, test evaluation, export, card, between sweep
    points) it stops at once, since the writes there are atomic and ``--resume`` redoes an
    interrupted finishing step."""
    with _sigterm_as_interrupt():
        return _run_recipe(recipe, options)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated


def _run_recipe(recipe: Recipe | None, options: RunOptions) -> Path:
    resume = options.resume
    if resume is not None and options.out_dir is not None:
        raise RunError(
            f"--out cannot be combined with --resume: a run continues in its own directory "
            f"({resume}); drop --out (copy the result elsewhere with `zoo export {resume} --out "
            "DIR` once it is done)"
        )
    # Name the directory now, so that a stop can say which one continues (under torchrun
    # rank 0 picks the name and shares it: fit does that).
    single = not distributed.from_env().enabled
    if recipe is not None and resume is None and options.out_dir is None and single:
        _check_shard(options.shard, bool(recipe.sweep), None)  # shards need an explicit --out
        options = dataclasses.replace(options, out_dir=default_run_dir(recipe))
    target = resume if resume is not None else options.out_dir
    try:
        return _train_or_sweep(recipe, options)
    except KeyboardInterrupt as e:  # outside the epochs: loading, test, finishing, a sweep
        raise _interrupted(e, target, recipe, options) from None


def _train_or_sweep(recipe: Recipe | None, options: RunOptions) -> Path:
    resume = options.resume
    is_sweep = (recipe is not None and bool(recipe.sweep)) or (
        resume is not None and (Path(resume) / "sweep.json").is_file()
    )
    if is_sweep:
        from zoo.training.sweep import run_sweep

        return run_sweep(recipe, options)
    _check_shard(options.shard, False, options.out_dir)
    target = resume if resume is not None else options.out_dir
    if target is None or not distributed.from_env().is_main:
        return fit(recipe, options)  # torchrun's timestamped directory, or rank 0 holds the lock
    with run_lock(target, "train into", command=command_line()):
        if resume is not None:
            recipe, options = _resume_plan(recipe, options)
        return fit(recipe, options)


def _interrupted(
    stop: KeyboardInterrupt, target: str | Path | None, recipe: Recipe | None, options: RunOptions
) -> TrainingInterrupted:
    """What a stop outside the epochs keeps, and the command that continues: ``--resume``
    once the directory records the run's recipe (it redoes what was interrupted), else the
    same command again (nothing of this run was written yet)."""
    from zoo.runs import files

    if target is None:
        return stopped(stop, "nothing was checkpointed", "zoo train --resume RUN_DIR")
    target = Path(target)
    recorded = None
    with contextlib.suppress(RunError, OSError):
        recorded = files.read_recipe_text(target)
    if options.resume is None and (recipe is None or recorded != recipe.to_yaml()):
        return stopped(stop, f"nothing of this run was written to {target}", command_line())
    world = distributed.from_env().world_size
    command = resume_command(target, options.device, world)
    kept = f"what {target} holds is kept, and --resume redoes what was interrupted"
    return stopped(stop, kept, command)


def _resume_plan(recipe: Recipe | None, options: RunOptions) -> tuple[Recipe, RunOptions]:
    """What ``--resume RUN`` does: continue from the checkpoint, refusing fewer ``epochs``
    than it holds; with no complete checkpoint (killed during the first epoch), start RUN over
    from its own recorded recipe, and say so."""
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
    check_precision(recipe.precision, dev.split(":")[0])
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
