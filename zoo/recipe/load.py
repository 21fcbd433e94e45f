"""Recipes: YAML files that bind a model to its data, optimiser, schedule and run settings.

A recipe is loaded with a guarded ``yaml.safe_load`` (no code, no alias bombs, at most
1 MiB), merged with the file it ``extends:``, changed by ``--set key.path=value`` overrides,
and validated into frozen dataclasses. Unknown keys are errors. Every :class:`RecipeError`
is one line naming the file, the key path, the bad value and the fix.

A ``sweep:`` mapping (dotted key -> list of values) describes a grid; :func:`expand_sweep`
turns it into one fully resolved recipe per point, and :func:`shard_points` splits the
points between array jobs.

This module reads files, applies ``extends:`` and overrides, and expands sweeps; the
dataclasses and their typed reader are :mod:`zoo.recipe.schema`, the rules
:mod:`zoo.recipe.rules` and :mod:`zoo.recipe.checks`.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from zoo._yaml import parse_yaml, read_yaml_file
from zoo.errors import RecipeError
from zoo.recipe.checks import check_combinations, check_data, check_model, check_optimizer
from zoo.recipe.problems import KeyPathError, fail, kind, show
from zoo.recipe.schema import Recipe, SweepPoint, build, check_key_path, thaw

__all__ = [
    "apply_overrides",
    "expand_sweep",
    "from_dict",
    "load_recipe",
    "parse_shard",
    "recipes_root",
    "shard_points",
]

MAX_EXTENDS = 16  # length of an `extends:` chain


# ---------------------------------------------------------------------------------------
# extends and overrides


def recipes_root(path: str | Path) -> Path:
    """The folder an ``extends:`` chain starting at recipe ``path`` must stay inside: the
    first of the recipe's folder and its parents that is named ``recipes`` or holds ``.git``,
    else the recipe's own folder."""
    folder = Path(os.path.realpath(Path(path).parent))
    for candidate in (folder, *folder.parents):
        if candidate.name == "recipes" or (candidate / ".git").exists():
            return candidate
    return folder


def _load_tree(
    path: Path, root: Path, origins: dict[str, Path], chain: tuple[Path, ...] = ()
) -> dict[str, Any]:
    """The file's mapping with its ``extends:`` chain merged underneath. ``origins`` gets,
    for every key path, the file that set it last (errors name the file a key came from)."""
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(p.name for p in (*chain, resolved))
        fail(str(path), "extends", f"cycle {cycle}", "remove one of the `extends:` lines")
    if len(chain) >= MAX_EXTENDS:
        fail(str(path), "extends", "chain too long", f"use at most {MAX_EXTENDS} levels")
    data = read_yaml_file(path)
    base_name = data.pop("extends", None)
    if base_name is not None:
        base_path = _extends_path(path, base_name, root)
        try:
            base = _load_tree(base_path, root, origins, (*chain, resolved))
        except RecipeError as e:
            raise RecipeError(f"{path} extends {base_name}: {e}") from None
        data = _deep_merge(base, _with_origins(data, path, origins))
    else:
        _with_origins(data, path, origins)
    return data


def _extends_path(path: Path, base_name: Any, root: Path) -> Path:
    """``base_name`` relative to ``path``'s folder, refused (before it is read, so nothing of
    it is ever shown) unless it stays inside ``root``."""
    if not isinstance(base_name, str) or not base_name:
        fail(str(path), "extends", f"got {show(base_name)}", "give one relative file name")
    if "\0" in base_name:
        fail(str(path), "extends", "the file name holds a NUL byte", "give a plain file name")
    base_path = path.parent / base_name
    real = Path(os.path.realpath(base_path))
    if real != root and not real.is_relative_to(root):
        fail(
            str(path),
            "extends",
            f"{show(base_name)} is outside the recipes root {root}",
            "extend a recipe inside it, or name a wider root with --recipes-root",
        )
    return base_path


def _with_origins(data: dict[str, Any], path: Path, origins: dict[str, Path]) -> dict[str, Any]:
    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for key, value in node.items():
            origins[f"{prefix}{key}"] = path
            if isinstance(value, Mapping):
                walk(value, f"{prefix}{key}.")

    walk(data, "")
    return data


def _origin(key_path: str, origins: Mapping[str, Path]) -> Path | None:
    parts = key_path.split(".")
    for end in range(len(parts), 0, -1):
        found = origins.get(".".join(parts[:end]))
        if found is not None:
            return found
    return None


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``data`` with each ``"key.path=YAML value"`` set, creating intermediate
    mappings. ``sweep.<dotted key>=[...]`` sets one sweep axis."""
    result = copy.deepcopy(dict(data))
    for override in overrides:
        label = f"override {show(override)}"
        key, sep, text = str(override).partition("=")
        key = key.strip()
        if not sep or not key:
            fail(label, "", "expected KEY=VALUE", "write it like optim.lr=0.01")
        parts = _split_key(key, label)
        check_key_path(parts, label)
        value = parse_yaml(text, label) if text.strip() else None
        set_path(result, parts, value, label)
    return result


def _split_key(key: str, label: str) -> list[str]:
    if key == "sweep" or key.startswith("sweep."):
        rest = key[len("sweep.") :]
        return ["sweep", rest] if rest else ["sweep"]
    parts = key.split(".")
    if any(not p for p in parts):
        fail(label, key, "empty part in key path", "write keys like optim.lr")
    return parts


def set_path(data: dict[str, Any], parts: list[str], value: Any, label: str) -> None:
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            fail(label, where, f"is {show(child)}, not a mapping", f"set {where} itself")
        node = child
    node[parts[-1]] = value


# ---------------------------------------------------------------------------------------
# Public entry points


def from_dict(data: Mapping[str, Any], source: str = "<dict>") -> Recipe:
    """Validate plain data (as from YAML, after extends and overrides) into a Recipe."""
    if not isinstance(data, Mapping):
        fail(source, "", f"top level is {kind(data)}, not a mapping", "give a dict")
    recipe: Recipe = build(Recipe, dict(data), "", source)
    recipe = dataclasses.replace(recipe, source=source, imports=_import_models(recipe, source))
    check_data(recipe.data, source)
    check_optimizer(recipe.optim.name, source)
    check_combinations(recipe, source)
    check_model(recipe, source)
    expand_sweep(recipe)  # every sweep point must be a valid recipe on its own
    return recipe


def _import_models(recipe: Recipe, source: str) -> tuple[str, ...]:
    """Import ``imports:`` (models registered in scripts) before the model is looked up;
    the recipe keeps absolute paths, so its run resumes and loads from anywhere."""
    from zoo.errors import ZooError
    from zoo.models import scripts

    base = Path(source).parent if Path(source).is_file() else None
    try:
        return tuple(scripts.import_all(recipe.imports, base))
    except ZooError as e:
        raise KeyPathError(f"{source}: imports: {e}", "imports") from None


def load_recipe(
    path: str | Path, overrides: Sequence[str] = (), *, root: str | Path | None = None
) -> Recipe:
    """Read ``path``, merge its ``extends:`` chain, apply ``overrides`` ("a.b=YAML value")
    and validate. ``name`` defaults to the file name without its suffix.

    Every file of the ``extends:`` chain must lie inside ``root`` (default:
    :func:`recipes_root` of ``path``); an error about a key names the file that set it."""
    path = Path(path)
    if "\0" in str(path):
        fail(repr(str(path)), "", "the path holds a NUL byte", "give a plain file name")
    origins: dict[str, Path] = {}
    top = Path(os.path.realpath(root)) if root is not None else recipes_root(path)
    data = _load_tree(path, top, origins)
    data.setdefault("name", path.stem)
    try:
        data = apply_overrides(data, overrides)
    except RecipeError as e:
        raise RecipeError(f"{path}: {e}") from None
    try:
        return from_dict(data, source=str(path))
    except KeyPathError as e:
        for override in reversed(overrides):
            key = override.partition("=")[0].strip()
            if e.key_path == key or e.key_path.startswith(key + "."):
                raise RecipeError(f"{e} (set by override {show(override)})") from None
        origin = _origin(e.key_path, origins) if e.key_path else None
        prefix = f"{path}: "
        if origin is not None and origin.resolve() != path.resolve() and str(e).startswith(prefix):
            message = f"{origin} (extended by {path}): {str(e)[len(prefix) :]}"
            raise KeyPathError(message, e.key_path) from None
        raise


def expand_sweep(recipe: Recipe) -> list[SweepPoint]:
    """One fully resolved recipe per grid point (cartesian product in key order);
    ``[]`` when the recipe has no sweep."""
    if not recipe.sweep:
        return []
    base = recipe.to_dict()
    del base["sweep"]
    source = recipe.source or "<dict>"
    keys = list(recipe.sweep)
    grids = [[thaw(v) for v in recipe.sweep[k]] for k in keys]
    _check_sweep_axes(source, keys, grids)
    points: list[SweepPoint] = []
    names: set[str] = set()
    for index, combo in enumerate(itertools.product(*grids)):
        values = dict(zip(keys, combo, strict=True))
        name = _point_name(values, index, names)
        data = copy.deepcopy(base)
        for key, value in values.items():
            set_path(data, key.split("."), value, f"{source}: sweep")
        point_recipe = from_dict(data, f"{source}: sweep point {name}")
        point_recipe = dataclasses.replace(point_recipe, source=source)
        points.append(SweepPoint(index, name, values, point_recipe))
    return points


def _check_sweep_axes(source: str, keys: list[str], grids: list[list[Any]]) -> None:
    """Refuse axes that overlap (``optim`` and ``optim.lr``: a point named for one lr would
    train with another) and values repeated within an axis (the same run twice)."""
    for a, b in itertools.permutations(keys, 2):
        if b.startswith(a + "."):
            fail(source, f"sweep.{b}", f"overlaps sweep.{a}", f"sweep either {a} or {b}, not both")
    for key, values in zip(keys, grids, strict=True):
        seen: set[str] = set()
        for value in values:
            text = json.dumps(value, sort_keys=True, default=str)
            if text in seen:
                fail(source, f"sweep.{key}", f"repeats {show(value)}", "list each value once")
            seen.add(text)


def _point_name(values: Mapping[str, Any], index: int, taken: set[str]) -> str:
    """``optim.lr=0.1,model.name=mlp_relu`` with every unsafe character replaced by '_'."""
    parts = []
    for key, value in values.items():
        text = _value_text(value)
        parts.append(f"{key}={re.sub(r'[^A-Za-z0-9._=+-]', '_', text)}")
    name = ",".join(parts)
    if len(name) > 120:
        name = name[:100] + "_" + hashlib.sha256(name.encode()).hexdigest()[:8]
    if name in taken:
        name = f"{name}_{index}"
    taken.add(name)
    return name


def _value_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "_".join(_value_text(v) for v in value)
    return json.dumps(value)


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``: this job runs points i, i+n, i+2n, ..."""
    match = re.fullmatch(r"\s*(\d{1,6})\s*/\s*(\d{1,6})\s*", str(text))
    index, count = (int(match[1]), int(match[2])) if match else (-1, 0)
    if count < 1 or not 0 <= index < count:
        raise RecipeError(
            f"shard {show(text)}: expected i/n with 0 <= i < n; write e.g. --shard 0/4 "
            "(shards are numbered from 0)"
        )
    return index, count


def shard_points(points: list[SweepPoint], index: int, count: int) -> list[SweepPoint]:
    """The points shard ``index`` of ``count`` runs; together the shards run each once."""
    parse_shard(f"{index}/{count}")
    return points[index::count]
