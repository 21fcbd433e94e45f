"""Recipes: YAML files that bind a model to its data, optimiser, schedule and run settings.

A recipe is loaded with a guarded ``yaml.safe_load`` (no code, no alias bombs, at most
1 MiB), merged with the file it ``extends:``, changed by ``--set key.path=value`` overrides,
and validated into frozen dataclasses. Unknown keys are errors. Every :class:`RecipeError`
is one line naming the file, the key path, the bad value and the fix.

A ``sweep:`` mapping (dotted key -> list of values) describes a grid; :func:`expand_sweep`
turns it into one fully resolved recipe per point, and :func:`shard_points` splits the
points between array jobs.

This module holds the dataclasses, the schema that builds them and the public functions;
:mod:`zoo._yaml` parses the text and :mod:`zoo._recipe_checks` holds the validation rules.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import yaml

from zoo._recipe_checks import (
    _CHECKS,
    _check_combinations,
    _check_data,
    _check_model,
    _check_optimizer,
    _fail,
    _KeyPathError,
    _kind,
    _show,
    _suggest,
)
from zoo._yaml import _parse_yaml, _read_yaml_file
from zoo.errors import RecipeError

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

MAX_EXTENDS = 16  # length of an `extends:` chain
MAX_SWEEP_POINTS = 1_000


class FrozenDict(dict[str, Any]):
    """A dict that cannot change, so recipes stay frozen all the way down. It is still a
    dict: ``**spec.args`` and ``json.dumps`` work on it."""

    def _immutable(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("recipe mappings are read-only; use dataclasses.replace or overrides")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _immutable
    __ior__ = _immutable

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items())))

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenDict, (dict(self),))


def _empty() -> FrozenDict:
    return FrozenDict()


@dataclass(frozen=True)
class ModelSpec:
    name: str
    # Builder keyword arguments; num_classes / in_chans / img_size here override the dataset's.
    args: Mapping[str, Any] = field(default_factory=_empty)
    plugin: str | None = None  # distribution to take the model from when two provide it


@dataclass(frozen=True)
class AugmentSpec:
    """Training augmentation, field for field a ``zoo.augment.AugmentConfig``."""

    hflip: bool = False
    crop_scale: tuple[float, float] | None = None  # random resized crop (None = off)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    crop_padding: int = 0  # random crop with zero padding (0 = off)


@dataclass(frozen=True)
class DataSpec:
    dataset: str = "cifar10"
    root: str | None = None
    batch_size: int = 128
    # Under torchrun: per_rank = batch_size images per process (global batch = batch_size x
    # processes); global = batch_size images per step over all processes (must divide evenly).
    batch_size_mode: str = "per_rank"
    eval_batch_size: int | None = None
    valid_size: int | None = None
    split_seed: int = 0
    train_subset: int | None = None
    test_subset: int | None = None
    augment: AugmentSpec = field(default_factory=AugmentSpec)
    synthetic: Mapping[str, Any] | None = None  # kwargs for the synthetic dataset


@dataclass(frozen=True)
class OptimSpec:
    name: str = "adam"  # sgd | momentum | adam | adamw | any timm optimizer
    lr: float = 1e-3
    momentum: float = 0.9  # used only by optimisers that have momentum
    weight_decay: float = 0.0
    betas: tuple[float, float] | None = None


@dataclass(frozen=True)
class ScheduleSpec:
    name: str = "none"  # none | cosine | step
    warmup_epochs: float = 0.0
    step_size: int = 10
    gamma: float = 0.1
    min_lr: float = 0.0


@dataclass(frozen=True)
class PublishSpec:
    hub: str | None = None  # Hub repo id "org/name"
    tag: str | None = None  # local weights tag: `model.tag`
    private: bool = False


@dataclass(frozen=True)
class Recipe:
    name: str
    model: ModelSpec
    data: DataSpec = field(default_factory=DataSpec)
    optim: OptimSpec = field(default_factory=OptimSpec)
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    epochs: int = 10
    seed: int = 42
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    precision: str = "fp32"  # fp32 | bf16 | fp16
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    channels_last: bool = False
    compile: bool = False
    limit_train_batches: int | None = None
    limit_eval_batches: int | None = None
    on_nan: str = "stop"  # stop | skip
    publish: PublishSpec = field(default_factory=PublishSpec)
    # Dotted key -> values; the grid is the cartesian product in key order.
    sweep: Mapping[str, Sequence[Any]] | None = None
    source: str | None = field(default=None, compare=False)  # file it came from; not saved

    def to_dict(self) -> dict[str, Any]:
        """Plain data (dicts, lists, scalars) that :func:`from_dict` turns back into this."""
        data = {f.name: _thaw(getattr(self, f.name)) for f in _fields(Recipe)}
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def hash(self) -> str:
        """First 16 hex digits of the sha256 of the canonical (sorted-key JSON) recipe."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class SweepPoint:
    index: int
    name: str  # filesystem-safe, e.g. "optim.lr=0.1"
    values: Mapping[str, Any]  # plain data: dotted key -> value
    recipe: Recipe  # fully resolved, without `sweep`


# ---------------------------------------------------------------------------------------
# extends and overrides


def _load_tree(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The file's mapping with its ``extends:`` chain merged underneath."""
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(p.name for p in (*chain, resolved))
        _fail(str(path), "extends", f"cycle {cycle}", "remove one of the `extends:` lines")
    if len(chain) >= MAX_EXTENDS:
        _fail(str(path), "extends", "chain too long", f"use at most {MAX_EXTENDS} levels")
    data = _read_yaml_file(path)
    base_name = data.pop("extends", None)
    if base_name is None:
        return data
    if not isinstance(base_name, str) or not base_name:
        _fail(str(path), "extends", f"got {_show(base_name)}", "give one relative file name")
    base_path = path.parent / base_name
    try:
        base = _load_tree(base_path, (*chain, resolved))
    except RecipeError as e:
        raise RecipeError(f"{path} extends {base_name}: {e}") from None
    return _deep_merge(base, data)


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
        label = f"override {_show(override)}"
        key, sep, text = str(override).partition("=")
        key = key.strip()
        if not sep or not key:
            _fail(label, "", "expected KEY=VALUE", "write it like optim.lr=0.01")
        parts = _split_key(key, label)
        _check_key_path(parts, label)
        value = _parse_yaml(text, label) if text.strip() else None
        _set_path(result, parts, value, label)
    return result


def _split_key(key: str, label: str) -> list[str]:
    if key == "sweep" or key.startswith("sweep."):
        rest = key[len("sweep.") :]
        return ["sweep", rest] if rest else ["sweep"]
    parts = key.split(".")
    if any(not p for p in parts):
        _fail(label, key, "empty part in key path", "write keys like optim.lr")
    return parts


def _set_path(data: dict[str, Any], parts: list[str], value: Any, label: str) -> None:
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            _fail(label, where, f"is {_show(child)}, not a mapping", f"set {where} itself")
        node = child
    node[parts[-1]] = value


def _check_key_path(parts: list[str], label: str, shown_as: str = "") -> None:
    """Refuse key paths that name no recipe field (free-form mappings accept any sub-key).
    ``shown_as`` prefixes the key path in messages (``sweep.`` for sweep keys)."""
    cls: Any = Recipe
    for i, part in enumerate(parts):
        key = ".".join(parts[: i + 1])
        where = shown_as + key
        if part == "sweep" and i == 0:
            if len(parts) > 1:
                _check_sweep_key(parts[1], label)
            return
        names = _field_names(cls)
        if part not in names:
            prefix = key.rpartition(".")[0]
            choices = [f"{prefix}.{n}" if prefix else n for n in names]
            _fail(label, where, "unknown key", _suggest(key, choices))
        hint = _hints(cls)[part]
        if _is_mapping_type(hint):
            return  # model.args.*, data.synthetic.*: the builder validates these
        cls = _dataclass_in(hint)
        if cls is None and i < len(parts) - 1:
            _fail(label, where, "is a value, not a section", f"set {key} itself")


def _check_sweep_key(key: str, label: str) -> None:
    parts = key.split(".")
    if any(not p for p in parts) or parts[0] in ("sweep", "name"):
        _fail(label, f"sweep.{key}", "not a sweepable key", "sweep a key path such as optim.lr")
    _check_key_path(parts, label, "sweep.")


# ---------------------------------------------------------------------------------------
# Typed validation driven by the dataclass fields


def _fields(cls: Any) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(cls) if f.name != "source"]


def _field_names(cls: Any) -> list[str]:
    return [f.name for f in _fields(cls)]


def _hints(cls: Any) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _union_args(hint: Any) -> tuple[Any, ...]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _is_mapping_type(hint: Any) -> bool:
    return any(typing.get_origin(a) is Mapping for a in _union_args(hint))


def _dataclass_in(hint: Any) -> Any:
    return next((a for a in _union_args(hint) if dataclasses.is_dataclass(a)), None)


def _build(cls: Any, data: Any, key_path: str, source: str) -> Any:
    """``cls(**data)`` with every field type-checked and range-checked."""
    if not isinstance(data, dict):
        _fail(source, key_path, f"got {_show(data)}", "write a mapping of key: value")
    names = _field_names(cls)
    for key in data:
        where = f"{key_path}.{key}" if key_path else str(key)
        if key not in names:
            choices = [f"{key_path}.{n}" if key_path else n for n in names]
            fix = _suggest(where, choices)
            if key == "extends":
                fix = "`extends:` works only at the top of a recipe file"
            _fail(source, where, "unknown key", fix)
    kwargs = {}
    hints = _hints(cls)
    for f in _fields(cls):
        where = f"{key_path}.{f.name}" if key_path else f.name
        if f.name in data:
            kwargs[f.name] = _coerce(hints[f.name], data[f.name], where, source)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            _fail(source, where, "missing", f"add `{f.name}:` to the recipe")
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, where: str, source: str) -> Any:
    options = _union_args(hint)
    if value is None and type(None) in options:
        return None
    (hint,) = [a for a in options if a is not type(None)]
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where, source)
    if where == "sweep":
        return _coerce_sweep(value, source)
    result = _coerce_plain(hint, value, where, source, len(options) > 1)
    check = _CHECKS.get(where)
    if check is not None:
        check(result, where, source)
    return result


def _coerce_plain(hint: Any, value: Any, where: str, source: str, optional: bool = False) -> Any:
    wanted = _TYPE_WORDS.get(hint)
    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            _fail(source, where, f"got {_show(value)}", "give a finite number")
        return float(value)
    if hint is str and isinstance(value, str):
        return value
    if typing.get_origin(hint) is tuple and isinstance(value, list | tuple) and len(value) == 2:
        return tuple(_coerce_plain(float, v, where, source) for v in value)
    if typing.get_origin(hint) is Mapping and isinstance(value, dict):
        return _freeze(value, where, source)
    if wanted is None:
        wanted = "a mapping" if typing.get_origin(hint) is Mapping else "a list of two numbers"
    _fail(source, where, f"got {_show(value)}", f"give {wanted}{' or null' if optional else ''}")


_TYPE_WORDS: dict[Any, str] = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
}


def _freeze(value: Any, where: str, source: str) -> Any:
    """Plain YAML data made immutable: dicts -> FrozenDict, lists -> tuples."""
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                _fail(source, where, f"key {_show(key)} is not a string", "quote the key")
        return FrozenDict({k: _freeze(v, f"{where}.{k}", source) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze(v, where, source) for v in value)
    if isinstance(value, float) and not math.isfinite(value):
        _fail(source, where, f"got {_show(value)}", "give a finite number")
    if value is None or isinstance(value, str | int | float):
        return value
    _fail(source, where, f"got {_show(value)}", "give numbers, strings, lists or mappings")


def _thaw(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _thaw(getattr(value, f.name)) for f in _fields(value)}
    if isinstance(value, dict):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_thaw(v) for v in value]
    return value


def _coerce_sweep(value: Any, source: str) -> FrozenDict:
    if not isinstance(value, dict) or not value:
        _fail(source, "sweep", f"got {_show(value)}", "write `sweep: {optim.lr: [0.1, 0.01]}`")
    points = 1
    for key, values in value.items():
        where = f"sweep.{key}"
        if not isinstance(key, str):
            _fail(source, where, "key is not a string", "use a dotted key such as optim.lr")
        _check_sweep_key(key, source)
        if not isinstance(values, list) or not values:
            _fail(source, where, f"got {_show(values)}", "give a non-empty list of values")
        points *= len(values)
    if points > MAX_SWEEP_POINTS:
        _fail(source, "sweep", f"{points} points", f"keep a sweep under {MAX_SWEEP_POINTS}")
    frozen: FrozenDict = _freeze(value, "sweep", source)
    return frozen


# ---------------------------------------------------------------------------------------
# Public entry points


def from_dict(data: Mapping[str, Any], source: str = "<dict>") -> Recipe:
    """Validate plain data (as from YAML, after extends and overrides) into a Recipe."""
    if not isinstance(data, Mapping):
        _fail(source, "", f"top level is {_kind(data)}, not a mapping", "give a dict")
    recipe: Recipe = _build(Recipe, dict(data), "", source)
    recipe = dataclasses.replace(recipe, source=source)
    _check_data(recipe.data, source)
    _check_optimizer(recipe.optim.name, source)
    _check_combinations(recipe, source)
    _check_model(recipe, source)
    expand_sweep(recipe)  # every sweep point must be a valid recipe on its own
    return recipe


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Read ``path``, merge its ``extends:`` chain, apply ``overrides`` ("a.b=YAML value")
    and validate. ``name`` defaults to the file name without its suffix."""
    path = Path(path)
    data = _load_tree(path)
    data.setdefault("name", path.stem)
    try:
        data = apply_overrides(data, overrides)
    except RecipeError as e:
        raise RecipeError(f"{path}: {e}") from None
    try:
        return from_dict(data, source=str(path))
    except _KeyPathError as e:
        for override in reversed(overrides):
            key = override.partition("=")[0].strip()
            if e.key_path == key or e.key_path.startswith(key + "."):
                raise RecipeError(f"{e} (set by override {_show(override)})") from None
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
    grids = [[_thaw(v) for v in recipe.sweep[k]] for k in keys]
    points: list[SweepPoint] = []
    names: set[str] = set()
    for index, combo in enumerate(itertools.product(*grids)):
        values = dict(zip(keys, combo, strict=True))
        name = _point_name(values, index, names)
        data = copy.deepcopy(base)
        for key, value in values.items():
            _set_path(data, key.split("."), value, f"{source}: sweep")
        point_recipe = from_dict(data, f"{source}: sweep point {name}")
        point_recipe = dataclasses.replace(point_recipe, source=source)
        points.append(SweepPoint(index, name, values, point_recipe))
    return points


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
            f"shard {_show(text)}: expected i/n with 0 <= i < n; write e.g. --shard 0/4 "
            "(shards are numbered from 0)"
        )
    return index, count


def shard_points(points: list[SweepPoint], index: int, count: int) -> list[SweepPoint]:
    """The points shard ``index`` of ``count`` runs; together the shards run each once."""
    parse_shard(f"{index}/{count}")
    return points[index::count]
