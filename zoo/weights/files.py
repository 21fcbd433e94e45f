"""Model files: ``model.safetensors`` + ``config.json``, written and read back strictly.

A model directory (a run, an export, a Hub snapshot, a tagged entry of the local store)
holds at least these two files::

    model.safetensors   the state dict; metadata: architecture, zoo_version, recipe_hash
    config.json         {"architecture", "model_args", "num_classes", "input_size",
                         "mean", "std", "label_names", "interpolation", "crop_pct",
                         "crop_mode", "distribution", "distribution_version",
                         "zoo_version"}, and "overrides" when model_args change
                         what the named variant pins ({"activation": {"pinned": "tanh",
                         "used": "relu"}}): the name says how to rebuild, model_args
                         what was built

A model loaded by :func:`load_model_dir` carries that data config as ``model.pretrained_cfg``
(timm's keys, over the builder's defaults), so ``zoo predict`` and
``timm.data.resolve_data_config({}, model=m)`` preprocess as the weights were trained.

For timm architectures (``timm/<name>`` from the zoo-timm plugin) ``config.json`` also follows
timm's Hub format, so ``timm.create_model("hf-hub:org/repo", pretrained=True)`` loads it:
``architecture`` is timm's name (``resnet18``), zoo's name moves to ``zoo_architecture``, and
``pretrained_cfg`` carries input size, mean and std.

An export (:func:`export_run`) is the publishable part of a run: the two files above, the
model card ``README.md``, ``recipe.yaml``, ``metrics.jsonl``, ``summary.json`` and
``curves.png`` when the run has them.

Nothing here unpickles anything.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo._fs import check_regular, copy_regular, read_capped
from zoo._io import atomic_write_bytes, atomic_write_json
from zoo.errors import RunError, UnknownModelError, WeightsError, ZooError

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "CONFIG_NAME",
    "PUBLISHABLE_FILES",
    "WEIGHTS_NAME",
    "architecture_of",
    "check_export_target",
    "check_fit",
    "export_run",
    "load_model_dir",
    "load_state_dict",
    "load_weights",
    "model_config",
    "publishable_files",
    "read_config",
    "save_model_files",
    "staged_dir",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PUBLISHABLE_FILES = (
    WEIGHTS_NAME,
    CONFIG_NAME,
    "README.md",
    "recipe.yaml",
    "metrics.jsonl",
    "summary.json",
    "curves.png",
)
_REQUIRED_KEYS = ("architecture", "model_args")
MAX_CONFIG_BYTES = 16 << 20  # a config.json is a few KiB; /dev/zero or a bomb is refused
_TIMM_PREFIX = "timm/"
# How an image is resized and cropped to input_size (timm's data config keys).
PREPROCESSING_KEYS = ("interpolation", "crop_pct", "crop_mode")
# A registered model name (optionally one namespace deep, like timm/resnet18): never a path,
# a Hub source or a tagged name, so a hostile config.json cannot redirect loading elsewhere.
_ARCHITECTURE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-.]*(/[A-Za-z0-9_][A-Za-z0-9_\-.]*)?")
# timm pretrained_cfg entries that describe the architecture, not where weights came from.
_TIMM_CFG_KEYS = (
    "fixed_input_size",
    "interpolation",
    "crop_pct",
    "crop_mode",
    "pool_size",
    "first_conv",
    "classifier",
)


def model_config(
    model: nn.Module,
    *,
    input_size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    label_names: Sequence[str] | None = None,
    data_cfg: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``config.json`` contents for a model built by :func:`zoo.create`.

    ``interpolation``, ``crop_pct`` and ``crop_mode`` (how an image is resized and cropped to
    ``input_size``) come from ``data_cfg``, else from the model's ``pretrained_cfg``."""
    from zoo._version import __version__

    cfg = getattr(model, "zoo_cfg", None)
    if not cfg or "architecture" not in cfg:
        raise WeightsError(
            f"{type(model).__name__} was not built by zoo.create, so its architecture is "
            "unknown; build it with zoo.create(NAME) to export it"
        )
    args = dict(cfg.get("args", {}))
    config = {
        "architecture": cfg["architecture"],
        "model_args": args,
        "num_classes": args.get("num_classes"),
        "input_size": list(input_size),
        "mean": list(mean),
        "std": list(std),
        "label_names": list(label_names) if label_names is not None else None,
        "distribution": cfg.get("distribution"),
        "distribution_version": cfg.get("version"),
        "zoo_version": __version__,
    }
    preprocessing = {**(getattr(model, "pretrained_cfg", None) or {}), **(data_cfg or {})}
    config.update({k: preprocessing[k] for k in PREPROCESSING_KEYS if preprocessing.get(k)})
    if cfg.get("imports"):  # scripts or modules that register the architecture (--import)
        config["imports"] = list(cfg["imports"])
    if cfg.get("overrides"):  # pins of the named variant that model_args change
        config["overrides"] = dict(cfg["overrides"])
    if cfg["architecture"].startswith(_TIMM_PREFIX):
        config.update(_timm_hub_fields(model, config))
    return config


def _timm_hub_fields(model: nn.Module, config: dict[str, Any]) -> dict[str, Any]:
    """The keys timm's ``load_model_config_from_hf`` reads, next to zoo's own."""
    own_cfg = getattr(model, "pretrained_cfg", None) or {}
    pretrained_cfg = {k: own_cfg[k] for k in _TIMM_CFG_KEYS if own_cfg.get(k) is not None}
    pretrained_cfg.update(
        input_size=config["input_size"],
        mean=config["mean"],
        std=config["std"],
        num_classes=config["num_classes"],
    )
    model_args = dict(config["model_args"])
    if not pretrained_cfg.get("fixed_input_size"):
        # timm passes model_args to the constructor, and architectures with global pooling
        # (ResNet, ...) take no img_size; zoo-timm records it only as the input size.
        model_args.pop("img_size", None)
    fields: dict[str, Any] = {
        "architecture": config["architecture"][len(_TIMM_PREFIX) :],
        "zoo_architecture": config["architecture"],
        "model_args": model_args,
        "pretrained_cfg": pretrained_cfg,
    }
    if isinstance(getattr(model, "num_features", None), int):
        fields["num_features"] = model.num_features
    return fields


def architecture_of(config: Mapping[str, Any]) -> str:
    """zoo's registry name for the architecture a ``config.json`` describes."""
    return str(config.get("zoo_architecture") or config["architecture"])


def save_model_files(
    model: nn.Module,
    out_dir: str | Path,
    *,
    input_size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    label_names: Sequence[str] | None = None,
    recipe_hash: str | None = None,
    data_cfg: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``model.safetensors`` and ``config.json`` atomically; return the config.
    ``data_cfg`` may set ``interpolation``, ``crop_pct`` and ``crop_mode`` (see
    :func:`model_config`)."""
    from safetensors.torch import save

    from zoo._version import __version__

    config = model_config(
        model, input_size=input_size, mean=mean, std=std, label_names=label_names, data_cfg=data_cfg
    )
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"architecture": config["architecture"], "zoo_version": __version__, "format": "pt"}
    if recipe_hash:
        metadata["recipe_hash"] = recipe_hash
    out = Path(out_dir)
    atomic_write_bytes(out / WEIGHTS_NAME, _sorted_metadata(save(state, metadata=metadata)))
    atomic_write_json(out / CONFIG_NAME, config)
    return config


def _sorted_metadata(blob: bytes) -> bytes:
    """``blob`` with its ``__metadata__`` keys sorted. safetensors writes them in hash-map
    order, which differs between processes, so equal weights would give different files
    (and a different sha256 on the Hub). Offsets are relative to the data, which stays put."""
    size = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + size])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data must start 8-byte aligned, as safetensors does
    return len(text).to_bytes(8, "little") + text + blob[8 + size :]


def read_config(directory: str | Path) -> dict[str, Any]:
    """Read and check ``config.json`` of a model directory."""
    path = Path(directory) / CONFIG_NAME
    try:
        raw = read_capped(path, MAX_CONFIG_BYTES, error=WeightsError, fix="re-export the model")
        config = json.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise WeightsError(f"{path} is missing; is {directory} a zoo run or export?") from None
    except (OSError, ValueError, RecursionError) as e:  # bad JSON, too deep, a huge integer
        raise WeightsError(f"{path} is not valid JSON ({e}); re-export the model") from None
    if not isinstance(config, dict):
        raise WeightsError(f"{path} must hold a JSON object, found {type(config).__name__}")
    missing = [k for k in _REQUIRED_KEYS if k not in config]
    if missing:
        raise WeightsError(f"{path} lacks {', '.join(missing)}; re-export the model")
    if not isinstance(config["architecture"], str) or not isinstance(config["model_args"], dict):
        raise WeightsError(f"{path}: 'architecture' must be a string and 'model_args' an object")
    name = config.get("zoo_architecture", config["architecture"])
    if not isinstance(name, str) or not _ARCHITECTURE.fullmatch(name) or ".." in name:
        raise WeightsError(
            f"{path} names architecture {name!r}, which is not a model name "
            "(letters, digits, _ - . and at most one namespace/); re-export the model"
        )
    return config


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file; a missing, truncated or corrupted file is a WeightsError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(check_regular(path, error=WeightsError)))
    except FileNotFoundError:
        raise WeightsError(f"weights file {path} is missing") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise WeightsError(
            f"weights file {path} is corrupted or truncated ({e}); download or export it again"
        ) from None


def load_weights(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Strictly load ``state`` into ``model``, naming every missing, unexpected and
    mis-shaped key."""
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    _check_fit(own, {k: tuple(v.shape) for k, v in state.items()}, source)
    model.load_state_dict(state, strict=True)


def check_fit(
    own: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]], source: str
) -> None:
    """Raise WeightsError naming every missing, unexpected and mis-shaped key of weights
    (``found`` shapes) for a model (``own`` shapes)."""
    _check_fit(own, found, source)


def _check_fit(
    own: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]], source: str
) -> None:
    """Raise WeightsError naming every missing, unexpected and mis-shaped key."""
    missing = sorted(set(own) - set(found))
    unexpected = sorted(set(found) - set(own))
    shapes = sorted(
        f"{k}: weights {found[k]} vs model {own[k]}"
        for k in set(own) & set(found)
        if found[k] != own[k]
    )
    if missing or unexpected or shapes:
        parts = []
        for label, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape mismatch", shapes),
        ):
            if items:
                shown = "; ".join(items[:5]) + (
                    f"; ... ({len(items)} in all)" if len(items) > 5 else ""
                )
                parts.append(f"{label}: {shown}")
        raise WeightsError(
            f"weights from {source} do not fit the architecture: " + " | ".join(parts)
        )


def _weight_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from a safetensors header, without reading the tensors."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(check_regular(path, error=WeightsError)), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except FileNotFoundError:
        raise WeightsError(f"weights file {path} is missing") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise WeightsError(
            f"weights file {path} is corrupted or truncated ({e}); download or export it again"
        ) from None


def _build_from_config(name: str, plugin: str | None, args: dict[str, Any], where: Path) -> Any:
    """``registry.create`` with arguments from a file: any failure is the file's fault."""
    from zoo.errors import ZooError
    from zoo.models import registry

    if "pretrained" in args or "plugin" in args:  # would redirect loading elsewhere
        raise WeightsError(f"{where}: model_args may not set 'pretrained' or 'plugin'")
    try:
        return registry.build(name, plugin=plugin, **args)
    except ZooError:
        raise
    except Exception as e:  # builders are plugin code: a bad value may raise anything
        raise WeightsError(
            f"{where} has model_args that {name} cannot be built with "
            f"({type(e).__name__}: {e}); re-export the model"
        ) from None


def load_model_dir(directory: str | Path, plugin: str | None = None, **overrides: Any) -> nn.Module:
    """Rebuild the architecture named in ``config.json`` and load ``model.safetensors``.

    ``overrides`` change model arguments (e.g. ``num_classes``); weights must still fit.
    The model is first built on the ``meta`` device and compared with the shapes in the
    weights file's header, so a hostile ``config.json`` cannot make zoo allocate a model
    larger than the weights it came with.
    """
    import torch

    from zoo.models import registry
    from zoo.runs.lock import check_unlocked

    directory = Path(directory)
    check_unlocked(directory, "load the weights of")  # a run being trained is in flux
    config = read_config(directory)
    name = architecture_of(config)
    args = {**config["model_args"], **overrides}
    try:
        # get_entry first: it accepts only registered names, so create() cannot take the
        # name for a directory, a Hub source or a tag.
        entry = registry.get_entry(name, plugin)
    except UnknownModelError:
        dist = config.get("distribution") or "the plugin that provides it"
        imports = [str(i) for i in config.get("imports") or []]
        if not imports and str(dist).endswith(".py"):
            imports = [str(dist)]
        if imports:  # quoted: the names come from the file, the command is for a shell
            flags = " ".join(f"--import {shlex.quote(i)}" for i in imports)
            raise WeightsError(
                f"{directory / CONFIG_NAME} needs architecture {name!r}, which is registered "
                f"in {', '.join(imports)}; import it first: `zoo ... {flags}` on the command "
                f"line, or zoo.import_models({', '.join(map(repr, imports))}) in Python"
            ) from None
        raise WeightsError(
            f"{directory / CONFIG_NAME} needs architecture {name!r}, which no "
            f"installed plugin provides; install it with `pip install {shlex.quote(str(dist))}`"
        ) from None
    weights = directory / WEIGHTS_NAME
    found = _weight_shapes(weights)
    with torch.device("meta"):
        skeleton = _build_from_config(entry.name, plugin, args, directory / CONFIG_NAME)
    own = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    _check_fit(own, found, str(directory))
    model = _build_from_config(entry.name, plugin, args, directory / CONFIG_NAME)
    load_weights(model, load_state_dict(weights), str(directory))
    attach_trained_data_cfg(model, config, directory / CONFIG_NAME)
    return model


def attach_trained_data_cfg(model: nn.Module, config: Mapping[str, Any], path: Path) -> None:
    """Set ``model.pretrained_cfg`` (and timm's alias ``default_cfg``) to the builder's
    defaults updated with what ``config.json`` (at ``path``) says the weights were trained
    with: input_size, mean, std, num_classes, label_names and, when recorded, interpolation,
    crop_pct and crop_mode. A config without mean/std (an export of an older zoo) gets the
    values of the dataset its input size matches, else the builder's, and says so in a
    warning. Values that cannot be used raise :class:`WeightsError`."""
    from zoo.data.transforms import resolve_data_config
    from zoo.errors import DataError

    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    timm_cfg = config.get("pretrained_cfg")  # timm's Hub format (timm/<name> architectures)
    timm_cfg = timm_cfg if isinstance(timm_cfg, dict) else {}
    for key in ("input_size", "mean", "std", *PREPROCESSING_KEYS):
        value = config[key] if config.get(key) is not None else timm_cfg.get(key)
        if value is not None:
            cfg[key] = tuple(value) if isinstance(value, list) else value
    if config.get("mean") is None or config.get("std") is None:
        _default_normalisation(cfg, path)
    num_classes = config.get("num_classes", config["model_args"].get("num_classes"))
    if num_classes is not None:
        cfg["num_classes"] = num_classes
    if "label_names" in config:
        cfg["label_names"] = _label_names(config["label_names"], cfg.get("num_classes"), path)
    try:
        resolve_data_config(cfg)  # checks every value a transform would use
    except DataError as e:
        raise WeightsError(f"{path}: {e}; re-export the model") from None
    _check_input_size(tuple(cfg.get("input_size") or ()), config["model_args"], cfg, path)
    vars(model)["pretrained_cfg"] = vars(model)["default_cfg"] = cfg


def _check_input_size(
    size: tuple[Any, ...], args: Mapping[str, Any], cfg: Mapping[str, Any], path: Path
) -> None:
    """``input_size`` from the config must fit the model its ``model_args`` build: the
    channels of ``in_chans``, and the ``img_size`` of a model that takes only one (MLP,
    Mixer)."""
    chans, side = args.get("in_chans"), args.get("img_size")
    wrong = isinstance(chans, int) and len(size) == 3 and size[0] != chans
    if cfg.get("fixed_input_size") and isinstance(side, int) and len(size) == 3:
        wrong = wrong or tuple(size[1:]) != (side, side)
    if wrong:
        built = [chans if isinstance(chans, int) else size[0], *([side, side] if side else [])]
        raise WeightsError(
            f"{path}: input_size {list(size)} does not fit the model its model_args build, "
            f"which takes {built}; the config is damaged, re-export the model"
        )


def _default_normalisation(cfg: dict[str, Any], path: Path) -> None:
    from zoo.data.catalog import GEOMETRY, NORMALISATION

    size = tuple(cfg.get("input_size") or ())
    dataset = next((n for n, (_, c, s) in GEOMETRY.items() if size == (c, s, s)), None)
    if dataset is not None:
        cfg["mean"], cfg["std"] = NORMALISATION[dataset]
        what = f"{dataset}'s"
    else:
        what = "the architecture's default" if cfg.get("mean") else "ImageNet's"
    log.warning(
        "%s records no mean/std (an export of an older zoo); normalising with %s mean/std "
        "%s / %s. Re-export the weights to record the values they were trained with.",
        path,
        what,
        cfg.get("mean", "(0.485, 0.456, 0.406)"),
        cfg.get("std", "(0.229, 0.224, 0.225)"),
    )


def _label_names(names: Any, num_classes: Any, path: Path) -> tuple[str, ...] | None:
    if names is None:
        return None
    if (
        not isinstance(names, list)
        or not all(isinstance(n, str) for n in names)
        or (isinstance(num_classes, int) and len(names) != num_classes)
    ):
        raise WeightsError(
            f"{path}: label_names must be a list of {num_classes} class names or null; "
            "re-export the model"
        )
    return tuple(names)


def export_run(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    repo_id: str | None = None,
    force: bool = False,
) -> Path:
    """Write the publishable files of a run (or another export) to ``out_dir``.

    The weights are checked first (rebuilt and strictly loaded). ``out_dir`` defaults to
    ``RUN/export``; an existing one is refused unless ``force``. The directory appears whole
    or not at all: it is assembled next to its destination and renamed into place.
    ``repo_id`` is the Hub repo the card's usage snippet names.
    """
    from zoo.runs.lock import command_line, target_lock

    run = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run / "export"
    check_export_target(run, out, force=force)  # before the lock creates out's parents
    with target_lock(out, "export onto", command=command_line()):
        check_export_target(run, out, force=force)  # again: another export may just have won
        write_export(run, out, repo_id=repo_id)
    return out


def write_export(run: Path, out: Path, *, repo_id: str | None = None) -> None:
    """:func:`export_run`'s writing step, for a caller that holds the lock on ``out``."""
    from zoo.runs import card

    load_model_dir(run)
    with staged_dir(out) as tmp:
        for name in publishable_files(run):
            # never a link out, nor a hard link to some other file's content
            copy_regular(run / name, tmp / name, error=RunError, verb="export", single_link=True)
        atomic_write_bytes(tmp / "README.md", card.card_text(run, repo_id=repo_id).encode())


def check_finished(run: Path, what: str) -> None:
    """Refuse a run whose checkpoint is past the epochs its final weights and summary were
    written for: it was resumed and stopped before finishing again, so its weights,
    ``summary.json`` and card say one thing and ``metrics.jsonl`` another."""
    from zoo.runs import files

    try:
        record = files.read_json(run / "checkpoints" / "last.json", missing_ok=True) or {}
        summary = files.read_json(run / files.SUMMARY_NAME, missing_ok=True) or {}
    except ZooError:
        return  # damage is refused, with its own message, where the files are used
    done, finished = record.get("epoch"), summary.get("epochs_run", summary.get("epochs"))
    if isinstance(done, int) and isinstance(finished, int) and done > finished:
        raise RunError(
            f"cannot {what} {run}: it was resumed and stopped at epoch {done}, but its weights "
            f"and summary are from epoch {finished}; finish it with `zoo train --resume {run}` "
            "first"
        )


def check_export_target(source: Path, out: Path, *, force: bool) -> None:
    """Refuse to export ``source`` to ``out`` when that would lose something: a missing
    source, ``out`` being the source itself, an existing ``out`` without ``force``, or an
    ``out`` full of files that are not a zoo export."""
    from zoo.runs.lock import check_unlocked

    if not source.is_dir():
        raise RunError(f"run directory {source} does not exist")
    check_unlocked(source, "export")  # a run being trained: its files are in flux
    check_finished(source, "export")
    if out.resolve() == source.resolve():
        raise RunError(f"cannot export {source} onto itself; choose another --out")
    check_unlocked(out, "export onto")  # a run directory being trained into
    if out.exists() and not force:
        raise RunError(f"{out} already exists; pass --force to replace it, or choose another --out")
    if out.is_dir() and any(out.iterdir()) and not (out / CONFIG_NAME).is_file():
        raise RunError(f"refusing to replace {out}: it is not a zoo export; choose another --out")
    trained = [n for n in ("checkpoints", "sweep.json") if os.path.lexists(out / n)]
    if out.is_dir() and trained:  # an export never holds these: a run or sweep would be lost
        raise RunError(
            f"refusing to replace {out}: it is a training run or sweep (it holds {trained[0]}), "
            "not an export; choose another --out"
        )


@contextlib.contextmanager
def staged_dir(out: Path) -> Iterator[Path]:
    """A new directory next to ``out`` to fill inside the block. When the block succeeds it
    is renamed to ``out`` (replacing an existing one); when it fails it is removed. Readers
    see the whole directory or none of it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; an export is meant to be shared
        yield tmp
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publishable_files(directory: str | Path) -> list[str]:
    """The files of :data:`PUBLISHABLE_FILES` that ``directory`` holds, except README.md
    (the card is rendered for each export or push, see :func:`zoo.runs.card.card_text`)."""
    directory = Path(directory)
    # lexists, not is_file: a link or a FIFO under a publishable name is refused by the
    # copy (zoo._fs), not skipped silently
    return [
        name
        for name in PUBLISHABLE_FILES
        if name != "README.md" and os.path.lexists(directory / name)
    ]


def _replace_dir(new: Path, target: Path) -> None:
    """Rename ``new`` to ``target``; an existing ``target`` is swapped out, then removed."""
    if not target.exists():
        os.replace(new, target)
        return
    old = target.with_name(f".{target.name}.old.{os.getpid()}")
    os.replace(target, old)
    os.replace(new, target)
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old)
    else:
        old.unlink()
