"""Launching a recipe: train it, or every point of its sweep (:func:`run_recipe`, what
``zoo train`` calls), or say what that would do without training (:func:`plan`, what
``zoo train --dry-run`` prints).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo import distributed
from zoo.errors import RecipeError
from zoo.optim import build_optimizer
from zoo.rundir import default_run_dir
from zoo.train import (
    autocast_dtype,
    build_data,
    build_model,
    fit,
    select_device,
    steps_per_epoch,
)

if TYPE_CHECKING:
    from zoo.data import DataBundle
    from zoo.progress import Progress
    from zoo.recipe import Recipe

__all__ = ["plan", "run_recipe"]


def run_recipe(
    recipe: Recipe | None,
    out_dir: str | Path | None = None,
    *,
    resume: str | Path | None = None,
    device: str | None = None,
    force: bool = False,
    progress: Progress | Sequence[Progress] | None = None,
    shard: tuple[int, int] | None = None,
) -> Path:
    """Train a recipe, or every point of its sweep (``shard=(i, n)``: slice i of n, 0-based);
    return the run or sweep directory. ``recipe`` may be None when resuming."""
    is_sweep = (recipe is not None and bool(recipe.sweep)) or (
        resume is not None and (Path(resume) / "sweep.json").is_file()
    )
    if is_sweep:
        from zoo.sweep import run_sweep

        return run_sweep(
            recipe,
            out_dir,
            resume=resume,
            device=device,
            force=force,
            progress=progress,
            shard=shard,
        )
    if shard is not None and shard[1] > 1:
        raise RecipeError("--shard splits a sweep, but this recipe has no `sweep:` section")
    return fit(recipe, out_dir, resume=resume, device=device, force=force, progress=progress)


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
            model = build_model(run_recipe_, data)
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
