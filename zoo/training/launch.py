"""Launching a recipe: train it, or every point of its sweep (:func:`run_recipe`, what
``zoo train`` calls), or say what that would do without training (:func:`plan`, what
``zoo train --dry-run`` prints).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
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
from zoo.training.rundir import check_publish, default_run_dir

if TYPE_CHECKING:
    from zoo.data.datasets import DataBundle
    from zoo.recipe import Recipe

__all__ = ["check_options", "check_targets", "plan", "run_recipe"]

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


def check_options(options: RunOptions) -> None:
    """Refuse options that contradict each other: ``--resume`` continues a run in its own
    directory, so neither ``--out`` (another directory) nor ``--force`` (start it over) goes
    with it."""
    resume = options.resume
    if resume is not None and options.out_dir is not None:
        raise RunError(
            f"--out cannot be combined with --resume: a run continues in its own directory "
            f"({resume}); drop --out (copy the result elsewhere with `zoo export {resume} --out "
            "DIR` once it is done)"
        )
    if resume is not None and options.force:
        raise RunError(
            f"--force cannot be combined with --resume: --resume continues {resume} from its "
            f"last checkpoint, --force would start it over; drop --force to continue it, or "
            f"train it over with `zoo train RECIPE --out {resume} --force`"
        )


def _run_recipe(recipe: Recipe | None, options: RunOptions) -> Path:
    resume = options.resume
    check_options(options)
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
        from zoo.recipe import expand_sweep
        from zoo.training.sweep import run_sweep

        if recipe is not None and resume is None:
            for point in expand_sweep(recipe):  # a taken tag is refused before training
                check_publish(point.recipe)
        return run_sweep(recipe, options)
    _check_shard(options.shard, False, options.out_dir)
    target = resume if resume is not None else options.out_dir
    if recipe is not None and resume is None:
        check_publish(recipe)  # a taken tag is refused before training, not after it
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

    run_dir = Path(options.resume or ".")
    recipe, record = _check_resume(run_dir, recipe)
    if record is None:
        log.warning(
            "%s has no complete checkpoint (it was stopped during its first epoch); starting "
            "it over from its recorded recipe",
            run_dir,
        )
        return recipe, dataclasses.replace(options, resume=None, out_dir=run_dir, force=True)
    if recipe.to_yaml() != (files.read_recipe_text(run_dir) or ""):
        files.write_recipe(run_dir, recipe.to_yaml())  # the recipe it now trains to, honestly
    return recipe, options


def _check_resume(run_dir: Path, recipe: Recipe | None) -> tuple[Recipe, dict[str, Any] | None]:
    """What ``--resume RUN_DIR`` refuses, checked without writing anything: a recipe that
    differs from the run's in a key that cannot change, fewer ``epochs`` than the checkpoint
    holds, a damaged metrics line, a tag that is already taken. Returns the recipe to resume
    with and the checkpoint's record (None when there is no complete checkpoint)."""
    from zoo.runs import files
    from zoo.training.checkpoint import CHECKPOINT_DIR, JSON_NAME, load_record
    from zoo.training.rundir import resume_recipe

    if not os.path.lexists(run_dir / CHECKPOINT_DIR) and (run_dir / files.WEIGHTS_NAME).exists():
        raise RunError(  # weights without checkpoints: an export (resuming would overwrite it)
            f"cannot resume {run_dir}: it holds exported weights but no {CHECKPOINT_DIR}/, so it "
            "is an export, not a run; fine-tune from it with `model.pretrained: "
            f"{run_dir}` in a recipe, or resume the run it was exported from"
        )
    recipe = resume_recipe(run_dir, recipe)
    record = files.read_json(run_dir / CHECKPOINT_DIR / JSON_NAME, missing_ok=True)
    if record is not None:
        # an edited or damaged checkpoint is refused before the recipe is rewritten
        _, done = load_record(run_dir / CHECKPOINT_DIR)
        if recipe.epochs < done:
            raise RunError(
                f"cannot resume {run_dir} with epochs={recipe.epochs}: it has already trained "
                f"{done} epochs; resume with --set epochs=N for N >= {done}, or start a new run"
            )
        # a damaged line is refused before anything is written; a missing or incomplete
        # history is restored from the checkpoint when the run resumes (zoo.training.loop)
        files.read_metrics(run_dir, missing_ok=True)
    check_publish(recipe)
    return recipe, record


def _check_shard(shard: tuple[int, int] | None, is_sweep: bool, out_dir: Any) -> None:
    if shard is None or shard[1] <= 1:
        return
    if not is_sweep:
        raise RecipeError("--shard splits a sweep, but this recipe has no `sweep:` section")
    if out_dir is None:
        raise RunError(
            "--shard needs --out DIR so that every shard writes into the same sweep directory"
        )


def check_targets(recipe: Recipe, options: RunOptions) -> None:
    """What :func:`run_recipe` would refuse about where it writes, checked before anything is
    trained and leaving nothing behind (what ``zoo train --dry-run`` checks): contradicting
    options, a directory that cannot be created (a file in its path, /proc, read-only), one
    being written by a live process, an existing run without ``force``, a recipe its
    ``--resume`` run cannot continue with, and a ``publish.tag`` that is already taken.

    The checks are the run's own (:func:`check_options`, :func:`_check_resume`,
    :func:`~zoo.runs.files.check_run_dir`, :func:`~zoo.runs.lock.check_unlocked`,
    :func:`~zoo.training.rundir.check_publish`); whether a missing directory can be created
    is asked of the file system, the one sure answer (root may "write" to /proc), by
    creating it as the run's lock does and removing it again at once."""
    from zoo.recipe import expand_sweep, shard_points
    from zoo.runs import files
    from zoo.runs.lock import check_unlocked
    from zoo.training.rundir import resume_recipe
    from zoo.training.sweep import shared_root

    check_options(options)
    resume, force, shard = options.resume, options.force, options.shard
    target = Path(resume) if resume is not None else options.out_dir
    if recipe.sweep or (resume is not None and (Path(resume) / files.SWEEP_INDEX_NAME).is_file()):
        root = Path(target) if target is not None else default_run_dir(recipe)
        if resume is not None:
            recipe = resume_recipe(root, recipe)  # as run_sweep checks it
        else:
            _check_shard(shard, True, options.out_dir)
            if not shared_root(root, recipe, force, shard):
                _check_creatable(root)
                files.check_run_dir(root, force)
        points = expand_sweep(recipe)
        for point in shard_points(points, *shard) if shard else points:
            point_dir = root / point.name
            if resume is not None and (point_dir / files.SUMMARY_NAME).is_file():
                continue  # done: the resumed sweep skips it
            check_unlocked(point_dir, "train into")
            files.check_run_dir(point_dir, force or resume is not None)
            if resume is None:
                check_publish(point.recipe)
        return
    if resume is not None:
        check_unlocked(resume, "train into")
        _check_resume(Path(resume), recipe)
        return
    run_dir = Path(target) if target is not None else default_run_dir(recipe)
    _check_shard(shard, False, options.out_dir)
    _check_creatable(run_dir)
    check_unlocked(run_dir, "train into")
    files.check_run_dir(run_dir, force)
    check_publish(recipe)


def _check_creatable(run_dir: Path) -> None:
    """Refuse ``run_dir`` when it cannot be made a run directory, with the run lock's own
    message; leave nothing behind. A missing one is created as the lock creates it
    (:func:`zoo.runs.lock.run_lock`) and removed again at once."""
    import os

    from zoo.runs.lock import _make_dirs, _remove_created

    if run_dir.is_dir():
        if not os.access(run_dir, os.W_OK | os.X_OK):
            raise RunError(
                f"cannot write into run directory {run_dir} (permission denied); choose "
                "another --out"
            )
        return
    _remove_created(_make_dirs(run_dir))


def plan(
    recipe: Recipe,
    out_dir: str | Path | None = None,
    *,
    device: str | None = None,
    shard: tuple[int, int] | None = None,
    world_size: int = 1,
    resume: str | Path | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """What ``run_recipe`` would do, without training: resolved recipe, device, data shapes,
    each run's model and parameter count, and the run directories (``world_size``: in that
    many torchrun processes). It refuses what the run would refuse (:func:`check_targets`)
    and leaves nothing written. With ``resume`` the run or sweep in that directory is planned in
    place (``out_dir`` must then be None)."""
    import torch

    from zoo.models import scripts
    from zoo.recipe import expand_sweep, shard_points

    options = RunOptions(out_dir=out_dir, resume=resume, force=force, shard=shard)
    check_options(options)
    dev = select_device(device or recipe.device)
    check_precision(recipe.precision, dev.split(":")[0])
    if resume is not None:
        out_dir = resume  # a resumed run or sweep plans in place
    root = Path(out_dir) if out_dir is not None else default_run_dir(recipe)
    points = expand_sweep(recipe) if recipe.sweep else []
    _check_shard(shard, bool(points), out_dir)  # --dry-run refuses what the run refuses
    check_targets(recipe, dataclasses.replace(options, out_dir=None if resume else root))
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
        params = None  # not counted: the model comes from imports a dry run does not run
        if not (run_recipe_.imports and scripts.is_deferred()):
            with torch.device("meta"):  # shapes and counts only: allocates nothing
                model = model_for(run_recipe_, data)
            build_optimizer(model, run_recipe_.optim)
            params = sum(p.numel() for p in model.parameters())
        planned.append(
            {
                "run_dir": str(run_dir),
                "model": run_recipe_.model.name,
                "params": params,
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
