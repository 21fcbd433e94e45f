"""Recipes: YAML files that bind a model to its data, optimiser, schedule and run settings.

A recipe is loaded with a guarded ``yaml.safe_load`` (no code, no alias bombs, at most
1 MiB), merged with the file it ``extends:``, changed by ``--set key.path=value`` overrides,
and validated into frozen dataclasses. Unknown keys are errors. Every :class:`RecipeError`
is one line naming the file, the key path, the bad value and the fix.

A ``sweep:`` mapping (dotted key -> list of values) describes a grid; :func:`expand_sweep`
turns it into one fully resolved recipe per point, and :func:`shard_points` splits the
points between array jobs.
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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import yaml

from zoo.errors import RecipeError, ZooError, did_you_mean

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

MAX_FILE_BYTES = 1 << 20  # a recipe is a page of text; anything bigger is a mistake or an attack
MAX_ALIASES = 50  # anchors are handy for sharing a block; billions of laughs are not
MAX_NODES = 10_000  # values in a document (aliases expanded); a recipe has about 60
MAX_DEPTH = 64  # nesting of mappings and lists
MAX_EXTENDS = 16  # length of an `extends:` chain
MAX_BATCH_SIZE = 65_536  # larger batches exhaust memory before the first step
MAX_SWEEP_POINTS = 1_000
MAX_PARAMS = 1_000_000_000  # 4 GB of fp32 weights, 16 GB with Adam state
MAX_SYNTHETIC_BYTES = 4 << 30  # uint8 pixels over all synthetic splits

# Used only until zoo.data (which owns the list) can be imported.
FALLBACK_DATASETS: tuple[str, ...] = ("cifar10", "fashion_mnist", "synthetic")
BUILTIN_OPTIMIZERS: tuple[str, ...] = ("sgd", "momentum", "adam", "adamw")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
SCHEDULES: tuple[str, ...] = ("none", "cosine", "step")
ON_NAN: tuple[str, ...] = ("stop", "skip")
BATCH_SIZE_MODES: tuple[str, ...] = ("per_rank", "global")  # see zoo.distributed
DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d{1,2})?)$")
SAFE_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
TAG_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # no dots: `model.tag` splits at the last dot
HUB_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
# (classes, channels, image size) of the real datasets and their official split sizes.
_GEOMETRY = {"cifar10": (10, 3, 32), "fashion_mnist": (10, 1, 28)}
_OFFICIAL_SIZES = {"cifar10": (50_000, 10_000), "fashion_mnist": (60_000, 10_000)}
_SYNTHETIC_KEYS: tuple[str, ...] = ("num_classes", "in_chans", "img_size", "seed")
_SYNTHETIC_KEYS += ("train_size", "valid_size", "test_size")


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
    """Training augmentation, field for field a ``zoo.data.AugmentConfig``."""

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
# Errors


class _KeyPathError(RecipeError):
    """A RecipeError about one key path, so a caller can say which override set it."""

    def __init__(self, message: str, key_path: str) -> None:
        super().__init__(message)
        self.key_path = key_path


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _kind(value: Any) -> str:
    kinds = {bool: "true/false", int: "a number", float: "a number", str: "a string"}
    return kinds.get(type(value), "a list" if isinstance(value, list) else type(value).__name__)


def _fail(source: str, key_path: str, problem: str, fix: str) -> NoReturn:
    where = f"{source}: {key_path}" if key_path else source
    raise _KeyPathError(f"{where}: {problem}; {fix}", key_path)


# ---------------------------------------------------------------------------------------
# Guarded YAML

_FLOAT_RE = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


class _GuardedLoader(yaml.SafeLoader):
    """SafeLoader that counts aliases, refuses duplicate keys, and reads ``1e-3`` as a float
    (YAML 1.1, which PyYAML follows, wants ``1.0e-3``; people write ``1e-3``)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.alias_count = 0
        self.node_count = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        # Counting as we go stops a huge document early: the pure-Python parser needs ~20 s
        # for a 1 MiB list, but only the nodes it has composed so far are paid for.
        self.node_count += 1
        if self.node_count > MAX_NODES:
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(None, None, f"more than {MAX_NODES} values", mark)
        if self.check_event(yaml.AliasEvent):
            self.alias_count += 1
            if self.alias_count > MAX_ALIASES:
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(
                    None, None, f"more than {MAX_ALIASES} aliases (*name)", mark
                )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key_node.value!r}", key_node.start_mark
                    )
                seen.add(key_node.value)
        return super().construct_mapping(node, deep)


_GuardedLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+.0123456789"))


def _parse_yaml(text: str, source: str) -> Any:
    """Parse one YAML document; any failure becomes a RecipeError naming ``source``."""
    loader = None
    try:
        loader = _GuardedLoader(text)  # the reader rejects control characters here
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = " ".join(str(e.problem or e.context or "syntax error").split())
        what = "refused YAML" if problem.startswith("more than") else "malformed YAML"
        _fail(source, "", f"{what}{where}: {problem}", _yaml_fix(problem))
    except RecursionError:
        _fail(source, "", "YAML nested too deeply", f"keep nesting under {MAX_DEPTH} levels")
    except (yaml.YAMLError, ValueError, TypeError, OverflowError) as e:
        problem = " ".join(str(e).split())
        _fail(source, "", f"malformed YAML: {problem}", "fix the value it names")
    finally:
        if loader is not None:
            loader.dispose()
    _check_size(data, source)
    return data


def _yaml_fix(problem: str) -> str:
    if "values" in problem:
        return "a recipe needs far fewer values"
    if "alias" in problem:
        return "write the values out instead of repeating anchors"
    if "constructor for the tag" in problem:
        return "remove the !tag: recipes hold plain data only"
    if "duplicate key" in problem:
        return "keep one of the duplicate keys"
    return "check indentation, colons and quoting around that place"


def _check_size(data: Any, source: str) -> None:
    """Refuse documents whose alias-expanded size or nesting is absurd (or cyclic)."""
    budget = MAX_NODES
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        budget -= 1
        if budget < 0 or depth > MAX_DEPTH:
            what = f"over {MAX_NODES} values" if budget < 0 else f"over {MAX_DEPTH} levels deep"
            _fail(source, "", f"YAML expands to {what}", "write a plain recipe without anchors")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


def _read_yaml_file(path: Path) -> Any:
    source = str(path)
    try:
        if not path.exists():
            siblings = [p.name for p in path.parent.glob("*.y*ml")] if path.parent.is_dir() else []
            hint = did_you_mean(path.name, siblings).strip()
            _fail(source, "", "recipe file not found", hint or "check the path")
        if not path.is_file():
            _fail(source, "", "not a regular file", "give the path of a .yaml recipe file")
        if path.stat().st_size > MAX_FILE_BYTES:
            size = path.stat().st_size
            _fail(source, "", f"file is {size} bytes, over the 1 MiB limit", "use a small recipe")
        with path.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        _fail(source, "", f"cannot read file ({e.strerror or e})", "check that it is readable")
    if len(raw) > MAX_FILE_BYTES:
        _fail(source, "", "file is over the 1 MiB limit", "use a small recipe")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        _fail(source, "", f"not UTF-8 text (byte {e.start})", "save the recipe as UTF-8")
    data = _parse_yaml(text, source)
    if data is None:
        _fail(source, "", "file is empty", "write a mapping such as `name: x` and `model: {...}`")
    if not isinstance(data, dict):
        _fail(source, "", f"top level is {_kind(data)}, not a mapping", "write `key: value` lines")
    return data


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


def _suggest(name: str, choices: Iterable[str]) -> str:
    hint = did_you_mean(name, choices).strip()
    return hint or f"valid keys: {', '.join(choices)}"


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
# Range checks per key path


def _range(
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    fix: str = "",
) -> Callable[[Any, str, str], None]:
    def check(value: Any, where: str, source: str) -> None:
        bad = (low is not None and (value <= low if low_open else value < low)) or (
            high is not None and (value >= high if high_open else value > high)
        )
        if bad:
            lo = "" if low is None else ("(" if low_open else "[") + _number(low)
            hi = "" if high is None else _number(high) + (")" if high_open else "]")
            interval = f"in {lo or '(-inf'}, {hi or 'inf)'}"
            _fail(source, where, f"got {_show(value)}, must be {interval}", fix or "change it")

    return check


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _choice(choices: Sequence[str]) -> Callable[[Any, str, str], None]:
    def check(value: Any, where: str, source: str) -> None:
        if value not in choices:
            hint = did_you_mean(value, choices).strip()
            fix = hint or f"choose one of {', '.join(choices)}"
            _fail(source, where, f"got {_show(value)}", fix)

    return check


def _pair(low: float, high: float | None, fix: str) -> Callable[[Any, str, str], None]:
    def check(value: Any, where: str, source: str) -> None:
        if value is None:
            return
        a, b = value
        if a <= low or b < a or (high is not None and b > high):
            _fail(source, where, f"got {_show(list(value))}", fix)

    return check


def _betas(value: Any, where: str, source: str) -> None:
    if value is not None and not all(0 <= b < 1 for b in value):
        _fail(
            source,
            where,
            f"got {_show(list(value))}",
            "use two values in [0, 1), e.g. [0.9, 0.999]",
        )


def _regex(pattern: re.Pattern[str], fix: str) -> Callable[[Any, str, str], None]:
    def check(value: Any, where: str, source: str) -> None:
        if not pattern.match(value) or ".." in value or value.startswith("."):
            _fail(source, where, f"got {_show(value)}", fix)

    return check


_POSITIVE_INT = _range(1, fix="give a positive integer")
_CHECKS: dict[str, Callable[[Any, str, str], None]] = {
    "name": _regex(
        SAFE_NAME_RE,
        "use only letters, digits, '.', '_' and '-' (no '/', no '..', not starting with '.')",
    ),
    "epochs": _range(1, 1_000_000, fix="train for at least 1 epoch"),
    "seed": _range(0, 2**32 - 1, fix="use a seed between 0 and 4294967295"),
    "label_smoothing": _range(0, 1, high_open=True, fix="use 0.0 (off) to 0.2"),
    "grad_clip": _range(0, low_open=True, fix="use a positive max norm such as 1.0, or null"),
    "precision": _choice(PRECISIONS),
    "device": _regex(DEVICE_RE, "use auto, cpu, cuda, cuda:N or mps"),
    "on_nan": _choice(ON_NAN),
    "limit_train_batches": _POSITIVE_INT,
    "limit_eval_batches": _POSITIVE_INT,
    "data.batch_size": _range(1, MAX_BATCH_SIZE, fix=f"use 1 to {MAX_BATCH_SIZE}, e.g. 128"),
    "data.batch_size_mode": _choice(BATCH_SIZE_MODES),
    "data.eval_batch_size": _range(1, MAX_BATCH_SIZE, fix=f"use 1 to {MAX_BATCH_SIZE} or null"),
    "data.valid_size": _range(0, fix="hold out 0 or more images, or null for the default"),
    "data.split_seed": _range(0, 2**32 - 1, fix="use a seed between 0 and 4294967295"),
    "data.train_subset": _POSITIVE_INT,
    "data.test_subset": _POSITIVE_INT,
    "data.augment.crop_scale": _pair(0, 1, "use (min, max) with 0 < min <= max <= 1"),
    "data.augment.crop_ratio": _pair(0, None, "use (min, max) with 0 < min <= max"),
    "data.augment.crop_padding": _range(0, 64, fix="use 0 (off) to 64 pixels, e.g. 4"),
    "optim.lr": _range(0, low_open=True, fix="use a positive learning rate such as 0.001"),
    "optim.momentum": _range(0, 1, high_open=True, fix="use a value in [0, 1) such as 0.9"),
    "optim.weight_decay": _range(0, fix="use 0 (off) or a small value such as 5e-4"),
    "optim.betas": _betas,
    "schedule.name": _choice(SCHEDULES),
    "schedule.warmup_epochs": _range(0, fix="use 0 (off) or a few epochs"),
    "schedule.step_size": _range(1, fix="decay every 1 or more epochs"),
    "schedule.gamma": _range(0, 1, low_open=True, fix="use a factor in (0, 1] such as 0.1"),
    "schedule.min_lr": _range(0, fix="use 0 or a small positive learning rate"),
    "publish.hub": _regex(HUB_REPO_RE, "use a Hub repo id like your-name/mixer-p4"),
    "publish.tag": _regex(TAG_RE, "use letters, digits, '_' and '-' (no dots), e.g. cifar10_best"),
}


# ---------------------------------------------------------------------------------------
# Checks that need more than one field: registry, datasets, optimisers


def _data_module() -> Any:
    """zoo.data, or None while it does not exist (it owns the dataset list)."""
    import importlib

    try:
        return importlib.import_module("zoo.data")
    except ModuleNotFoundError as e:
        if e.name != "zoo.data":
            raise
        return None


def _datasets() -> tuple[str, ...]:
    data = _data_module()
    return FALLBACK_DATASETS if data is None else tuple(data.DATASETS)


def _synthetic_settings(given: Mapping[str, Any] | None) -> dict[str, Any]:
    data = _data_module()
    defaults = getattr(data, "SYNTHETIC_DEFAULTS", {}) if data is not None else {}
    return {**defaults, **(given or {})}


def _check_data(spec: DataSpec, source: str) -> None:
    datasets = _datasets()
    if spec.dataset not in datasets:
        hint = did_you_mean(spec.dataset, datasets).strip()
        fix = hint or f"choose one of {', '.join(datasets)}"
        _fail(source, "data.dataset", f"unknown dataset {_show(spec.dataset)}", fix)
    if spec.synthetic is not None and spec.dataset != "synthetic":
        fix = "remove data.synthetic or set data.dataset: synthetic"
        _fail(source, "data.synthetic", f"is set for dataset {spec.dataset!r}", fix)
    if spec.synthetic is not None:
        _check_synthetic(spec.synthetic, source)
    sizes = _OFFICIAL_SIZES.get(spec.dataset)
    if sizes is None:
        return
    train, test = sizes
    valid = 5_000 if spec.valid_size is None else spec.valid_size
    if valid >= train:
        fix = f"hold out fewer than {train} of {spec.dataset}'s {train} training images"
        _fail(source, "data.valid_size", f"got {valid}", fix)
    if spec.train_subset is not None and spec.train_subset > train - valid:
        fix = f"use at most {train - valid} ({train} minus {valid} held out), or null"
        _fail(source, "data.train_subset", f"got {spec.train_subset}", fix)
    if spec.test_subset is not None and spec.test_subset > test:
        _fail(source, "data.test_subset", f"got {spec.test_subset}", f"use at most {test}")


def _check_synthetic(synthetic: Mapping[str, Any], source: str) -> None:
    limits = {"num_classes": 100_000, "in_chans": 64, "img_size": 4096, "seed": 2**32 - 1}
    for key, value in synthetic.items():
        where = f"data.synthetic.{key}"
        if key not in _SYNTHETIC_KEYS:
            choices = [f"data.synthetic.{k}" for k in _SYNTHETIC_KEYS]
            _fail(source, where, "unknown key", _suggest(where, choices))
        low = 0 if key in ("seed", "valid_size") else 1
        high = limits.get(key, 10_000_000)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            _fail(source, where, f"got {_show(value)}", f"give an integer from {low} to {high}")
    settings = _synthetic_settings(synthetic)
    pixels = settings.get("in_chans", 1) * settings.get("img_size", 1) ** 2
    images = sum(settings.get(k, 0) for k in ("train_size", "valid_size", "test_size"))
    if pixels * images > MAX_SYNTHETIC_BYTES:
        gib = pixels * images / 2**30
        _fail(source, "data.synthetic", f"needs {gib:.0f} GiB of images", "use fewer or smaller")


def _check_optimizer(name: str, source: str) -> None:
    if name in BUILTIN_OPTIMIZERS:
        return
    try:
        import timm.optim

        offered = [str(n) for n in timm.optim.list_optimizers()]
    except ImportError:
        offered = []
    if name in offered:
        return
    hint = did_you_mean(name, dict.fromkeys([*BUILTIN_OPTIMIZERS, *offered])).strip()
    fix = hint or f"use {', '.join(BUILTIN_OPTIMIZERS)} or a timm optimizer name"
    _fail(source, "optim.name", f"unknown optimizer {_show(name)}", fix)


def _geometry(recipe: Recipe, source: str) -> dict[str, int]:
    """num_classes / in_chans / img_size the trainer will pass, checked against model.args."""
    data = recipe.data
    known = _GEOMETRY.get(data.dataset)
    geometry = dict(zip(("num_classes", "in_chans", "img_size"), known or (), strict=False))
    if data.dataset == "synthetic":
        settings = _synthetic_settings(data.synthetic)
        geometry = {k: v for k, v in settings.items() if k in _GEOMETRY_KEYS}
    for key, value in geometry.items():
        chosen = recipe.model.args.get(key, value)
        fits = chosen >= value if key == "num_classes" else chosen == value
        if not isinstance(chosen, int) or isinstance(chosen, bool) or not fits:
            need = f"at least {value}" if key == "num_classes" else f"{value}"
            fix = f"{data.dataset} needs {need}; remove model.args.{key} or change the dataset"
            _fail(source, f"model.args.{key}", f"got {_show(chosen)}", fix)
    return geometry


_GEOMETRY_KEYS = ("num_classes", "in_chans", "img_size")


# Upper bounds for the size arguments builders commonly take: building even on the meta
# device loops over blocks, so `num_blocks: 1e9` would hang instead of failing.
_ARG_LIMITS = {
    "num_classes": 100_000,
    "in_chans": 64,
    "img_size": 4096,
    "patch_size": 4096,
    "embed_dim": 65_536,
    "num_blocks": 1_000,
    "depth": 1_000,
    "num_heads": 1_024,
    "hidden_sizes": 1_048_576,
    "width": 65_536,
}


def _check_arg_limits(args: Mapping[str, Any], source: str) -> None:
    for key, limit in _ARG_LIMITS.items():
        value = args.get(key)
        values = value if isinstance(value, tuple) else (value,)
        too_big = [v for v in values if isinstance(v, int) and v > limit]
        if too_big or len(values) > _ARG_LIMITS["num_blocks"]:
            fix = f"use at most {limit}" if too_big else "use fewer layers"
            _fail(source, f"model.args.{key}", f"got {_show(value)}", fix)


def _check_model(recipe: Recipe, source: str) -> None:
    """Build the model on the meta device: no memory, no time, but every argument checked."""
    import torch

    from zoo import registry

    spec = recipe.model
    kwargs = {**_geometry(recipe, source), **spec.args}
    _check_arg_limits(kwargs, source)
    try:
        registry.get_entry(spec.name, spec.plugin)
    except ZooError as e:
        raise _KeyPathError(f"{source}: model.name: {e}", "model.name") from None
    try:
        with torch.device("meta"):
            model = registry.create(spec.name, plugin=spec.plugin, **kwargs)
    except ZooError as e:
        message = " ".join(str(e).split())
        if not message.startswith(spec.name):
            message = f"{spec.name}: {message}"
        fix = f"fix model.args {_show(dict(spec.args))}" if spec.args else "set model.args"
        _fail(source, "model.args", message, f"{fix} or choose another model or dataset")
    except Exception as e:  # a builder choking on a value of the wrong kind
        fix = f"check model.args {_show(dict(spec.args))} against `zoo models {spec.name}`"
        problem = f"building {spec.name} failed ({type(e).__name__}: {' '.join(str(e).split())})"
        _fail(source, "model.args", problem, fix)
    params = sum(p.numel() for p in model.parameters())
    if params > MAX_PARAMS:
        fix = f"make the model smaller (limit {MAX_PARAMS:,} parameters)"
        _fail(source, "model.args", f"{spec.name} would have {params:,} parameters", fix)


def _check_combinations(recipe: Recipe, source: str) -> None:
    if recipe.schedule.warmup_epochs > recipe.epochs:
        fix = f"warm up for at most the {recipe.epochs} epochs the run has"
        _fail(source, "schedule.warmup_epochs", f"got {recipe.schedule.warmup_epochs}", fix)
    if recipe.schedule.name == "cosine" and recipe.schedule.min_lr >= recipe.optim.lr:
        fix = f"use a min_lr below optim.lr ({recipe.optim.lr:g})"
        _fail(source, "schedule.min_lr", f"got {recipe.schedule.min_lr:g}", fix)
    if recipe.precision == "fp16" and recipe.device in ("cpu", "mps"):
        _fail(source, "precision", "fp16 needs a CUDA device", "use bf16 on CPU, or fp32")


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
