"""Recipes: YAML that binds a model name to its data, optimiser, schedule and run settings.

Owns the recipe format. Modules, bottom up: :mod:`~zoo.recipe.problems` (one-line errors),
:mod:`~zoo.recipe.rules` (per-key ranges and choices), :mod:`~zoo.recipe.schema` (frozen
dataclasses and their typed reader), :mod:`~zoo.recipe.checks` (checks across fields, the
model built on the meta device), :mod:`~zoo.recipe.load` (files, ``extends:``, overrides,
sweeps).

May import: the base modules, :mod:`zoo.models` (model names and meta-device builds) and
:mod:`zoo.data.catalog` (dataset facts). Nothing above it.
"""

from zoo.recipe.load import (
    apply_overrides,
    expand_sweep,
    from_dict,
    load_recipe,
    parse_shard,
    shard_points,
)
from zoo.recipe.schema import (
    AugmentSpec,
    DataSpec,
    FrozenDict,
    ModelSpec,
    OptimSpec,
    PublishSpec,
    Recipe,
    ScheduleSpec,
    SweepPoint,
)

__all__ = [
    "AugmentSpec",
    "DataSpec",
    "FrozenDict",
    "ModelSpec",
    "OptimSpec",
    "PublishSpec",
    "Recipe",
    "ScheduleSpec",
    "SweepPoint",
    "apply_overrides",
    "expand_sweep",
    "from_dict",
    "load_recipe",
    "parse_shard",
    "shard_points",
]
