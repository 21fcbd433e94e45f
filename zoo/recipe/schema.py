"""The recipe schema: frozen dataclasses, and the typed reader that builds them from plain
data, checking every key and value (per-key rules in :mod:`zoo.recipe.rules`)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import yaml

from zoo.recipe.problems import fail, show, suggest
from zoo.recipe.rules import CHECKS

__all__ = [
    "AugmentSpec",
    "CheckpointSpec",
    "DataSpec",
    "EarlyStoppingSpec",
    "EmaSpec",
    "EraseSpec",
    "FrozenDict",
    "MixupSpec",
    "ModelSpec",
    "OptimSpec",
    "PublishSpec",
    "Recipe",
    "ScheduleSpec",
    "SweepPoint",
    "build",
    "check_key_path",
    "thaw",
]

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
    # Fine-tuning: start from these weights (run/export dir, NAME.TAG, hf-hub:org/repo[@rev],
    # a .safetensors file); a new class count re-initialises the head, a new in_chans adapts
    # the first layer (zoo.weights.adapt).
    pretrained: str | None = None
    # Parameters not to train: fnmatch patterns of parameter names, or [body] (all but the
    # classifier).
    freeze: tuple[str, ...] | None = None


@dataclass(frozen=True)
class EraseSpec:
    """timm's RandomErasing on the normalised batch (zoo.training.regularise)."""

    prob: float = 0.25  # chance that an image gets a random rectangle erased
    mode: str = "pixel"  # const (zeros) | rand (one colour per box) | pixel (per-pixel noise)


@dataclass(frozen=True)
class AugmentSpec:
    """Training augmentation: field for field a ``zoo.data.augment.AugmentConfig``, plus
    ``erase``, which the trainer applies after normalisation."""

    hflip: bool = False
    crop_scale: tuple[float, float] | None = None  # random resized crop (None = off)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    crop_padding: int = 0  # random crop with zero padding (0 = off)
    # Per-image policy on uint8 pixels: rand-m9-mstd0.5 (RandAugment) | trivial | autoaugment
    auto: str | None = None
    erase: EraseSpec | None = None


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
    # imagefolder only: the side images are resized to (default: the model's img_size).
    img_size: int | None = None


@dataclass(frozen=True)
class OptimSpec:
    name: str = "adam"  # sgd | momentum | adam | adamw | any timm optimizer
    lr: float = 1e-3
    momentum: float = 0.9  # used only by optimisers that have momentum
    weight_decay: float = 0.0
    betas: tuple[float, float] | None = None
    head_lr_mult: float | None = None  # the classifier's lr = lr x head_lr_mult
    grad_accum_steps: int = 1  # micro-batches per optimizer step (loss scaled by 1/N)
    layer_decay: float | None = None  # lr x layer_decay^(depth from the top), via group_matcher


@dataclass(frozen=True)
class CheckpointSpec:
    keep_best: bool = False  # also keep the best epoch's weights (checkpoints/best.*)
    monitor: str = "valid_acc"  # valid_acc (higher is better) | valid_loss (lower)


@dataclass(frozen=True)
class EarlyStoppingSpec:
    patience: int = 5  # stop after this many epochs without improvement of checkpoint.monitor
    min_delta: float = 0.0  # smaller changes do not count as improvement


@dataclass(frozen=True)
class ScheduleSpec:
    name: str = "none"  # none | cosine | step | onecycle
    warmup_epochs: float = 0.0
    step_size: int = 10
    gamma: float = 0.1
    min_lr: float = 0.0
    # onecycle (torch's OneCycleLR, lr only): rise over pct_start of the run from
    # lr / div_factor to lr, then anneal to lr / (div_factor * final_div_factor)
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1e4


@dataclass(frozen=True)
class MixupSpec:
    """timm.data.Mixup on each training batch; the loss becomes soft-target cross-entropy."""

    mixup_alpha: float = 0.8  # Beta(alpha, alpha) mixing weight; 0 = no mixup
    cutmix_alpha: float = 1.0  # CutMix box; 0 = no cutmix
    prob: float = 1.0  # chance that a batch is mixed at all
    switch_prob: float = 0.5  # chance of cutmix instead of mixup when both are on
    label_smoothing: float = 0.1  # of the mixed targets (use this, not the top-level key)


@dataclass(frozen=True)
class EmaSpec:
    """timm.utils.ModelEmaV3: an exponential moving average of the weights, validated each
    epoch next to the raw ones (``test_weights: ema`` tests and exports it)."""

    decay: float = 0.9998
    warmup: bool = False  # timm's warm-up: decay rises from 0 towards `decay` over steps
    device: str | None = None  # cpu keeps the average off the accelerator; null: the model's


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
    # auto (bf16 where measured >= 1.2x faster, on CUDA where supported; else fp32) | fp32 |
    # bf16 | fp16 (CUDA); zoo.devices.choose_precision
    precision: str = "auto"
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    channels_last: bool = False
    compile: bool = False
    limit_train_batches: int | None = None
    limit_eval_batches: int | None = None
    on_nan: str = "stop"  # stop | skip
    publish: PublishSpec = field(default_factory=PublishSpec)
    checkpoint: CheckpointSpec = field(default_factory=CheckpointSpec)
    early_stopping: EarlyStoppingSpec | None = None
    mixup: MixupSpec | None = None  # mixup / cutmix (zoo.training.regularise)
    ema: EmaSpec | None = None  # weight EMA (zoo.training.regularise)
    # Weights to test and export: best | final | ema; null: best when there is a validation split.
    test_weights: str | None = None
    # Files or modules to import before building (models registered in a script).
    imports: tuple[str, ...] = ()
    # Dotted key -> values; the grid is the cartesian product in key order.
    sweep: Mapping[str, Sequence[Any]] | None = None
    source: str | None = field(default=None, compare=False)  # file it came from; not saved

    def to_dict(self) -> dict[str, Any]:
        """Plain data (dicts, lists, scalars) that :func:`from_dict` turns back into this."""
        data = {f.name: thaw(getattr(self, f.name)) for f in _fields(Recipe)}
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
# Key paths


def check_key_path(parts: list[str], label: str, shown_as: str = "") -> None:
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
            fail(label, where, "unknown key", suggest(key, choices))
        hint = _hints(cls)[part]
        if _is_mapping_type(hint):
            return  # model.args.*, data.synthetic.*: the builder validates these
        cls = _dataclass_in(hint)
        if cls is None and i < len(parts) - 1:
            fail(label, where, "is a value, not a section", f"set {key} itself")


def _check_sweep_key(key: str, label: str) -> None:
    parts = key.split(".")
    if any(not p for p in parts) or parts[0] in ("sweep", "name"):
        fail(label, f"sweep.{key}", "not a sweepable key", "sweep a key path such as optim.lr")
    check_key_path(parts, label, "sweep.")


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


def build(cls: Any, data: Any, key_path: str, source: str) -> Any:
    """``cls(**data)`` with every field type-checked and range-checked."""
    if not isinstance(data, dict):
        fail(source, key_path, f"got {show(data)}", "write a mapping of key: value")
    names = _field_names(cls)
    for key in data:
        where = f"{key_path}.{key}" if key_path else str(key)
        if key not in names:
            choices = [f"{key_path}.{n}" if key_path else n for n in names]
            fix = suggest(where, choices)
            if key == "extends":
                fix = "`extends:` works only at the top of a recipe file"
            fail(source, where, "unknown key", fix)
    kwargs = {}
    hints = _hints(cls)
    for f in _fields(cls):
        where = f"{key_path}.{f.name}" if key_path else f.name
        if f.name in data:
            kwargs[f.name] = _coerce(hints[f.name], data[f.name], where, source)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            fail(source, where, "missing", f"add `{f.name}:` to the recipe")
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, where: str, source: str) -> Any:
    options = _union_args(hint)
    if value is None and type(None) in options:
        return None
    (hint,) = [a for a in options if a is not type(None)]
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where, source)
    if where == "sweep":
        return _coerce_sweep(value, source)
    result = _coerce_plain(hint, value, where, source, len(options) > 1)
    check = CHECKS.get(where)
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
            fail(source, where, f"got {show(value)}", "give a finite number")
        return float(value)
    if hint is str and isinstance(value, str):
        return value
    if typing.get_args(hint) == (str, Ellipsis):  # a list of strings; one string is a list
        items = [value] if isinstance(value, str) else value
        if isinstance(items, list | tuple) and all(isinstance(v, str) and v for v in items):
            return tuple(items)
        fail(source, where, f"got {show(value)}", "give a list of strings")
    if typing.get_origin(hint) is tuple and isinstance(value, list | tuple) and len(value) == 2:
        return tuple(_coerce_plain(float, v, where, source) for v in value)
    if typing.get_origin(hint) is Mapping and isinstance(value, dict):
        return _freeze(value, where, source)
    if wanted is None:
        wanted = "a mapping" if typing.get_origin(hint) is Mapping else "a list of two numbers"
    fail(source, where, f"got {show(value)}", f"give {wanted}{' or null' if optional else ''}")


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
                fail(source, where, f"key {show(key)} is not a string", "quote the key")
        return FrozenDict({k: _freeze(v, f"{where}.{k}", source) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze(v, where, source) for v in value)
    if isinstance(value, float) and not math.isfinite(value):
        fail(source, where, f"got {show(value)}", "give a finite number")
    if value is None or isinstance(value, str | int | float):
        return value
    fail(source, where, f"got {show(value)}", "give numbers, strings, lists or mappings")


def thaw(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: thaw(getattr(value, f.name)) for f in _fields(value)}
    if isinstance(value, dict):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [thaw(v) for v in value]
    return value


def _coerce_sweep(value: Any, source: str) -> FrozenDict:
    if not isinstance(value, dict) or not value:
        fail(source, "sweep", f"got {show(value)}", "write `sweep: {optim.lr: [0.1, 0.01]}`")
    points = 1
    for key, values in value.items():
        where = f"sweep.{key}"
        if not isinstance(key, str):
            fail(source, where, "key is not a string", "use a dotted key such as optim.lr")
        _check_sweep_key(key, source)
        if not isinstance(values, list) or not values:
            fail(source, where, f"got {show(values)}", "give a non-empty list of values")
        points *= len(values)
    if points > MAX_SWEEP_POINTS:
        fail(source, "sweep", f"{points} points", f"keep a sweep under {MAX_SWEEP_POINTS}")
    frozen: FrozenDict = _freeze(value, "sweep", source)
    return frozen
