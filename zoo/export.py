"""Model files: ``model.safetensors`` + ``config.json``, written and read back strictly.

A model directory (a run, an export, a Hub snapshot, a tagged entry of the local store)
holds at least these two files::

    model.safetensors   the state dict; metadata: architecture, zoo_version, recipe_hash
    config.json         {"architecture", "model_args", "num_classes", "input_size",
                         "mean", "std", "label_names", "distribution",
                         "distribution_version", "zoo_version"}

Nothing here unpickles anything.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo._io import atomic_write_bytes, atomic_write_json
from zoo.errors import UnknownModelError, WeightsError

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "load_model_dir",
    "load_state_dict",
    "load_weights",
    "model_config",
    "read_config",
    "save_model_files",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_REQUIRED_KEYS = ("architecture", "model_args")


def model_config(
    model: nn.Module,
    *,
    input_size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    label_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The ``config.json`` contents for a model built by :func:`zoo.create`."""
    from zoo import __version__

    cfg = getattr(model, "zoo_cfg", None)
    if not cfg or "architecture" not in cfg:
        raise WeightsError(
            f"{type(model).__name__} was not built by zoo.create, so its architecture is "
            "unknown; build it with zoo.create(NAME) to export it"
        )
    args = dict(cfg.get("args", {}))
    return {
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


def save_model_files(
    model: nn.Module,
    out_dir: str | Path,
    *,
    input_size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    label_names: Sequence[str] | None = None,
    recipe_hash: str | None = None,
) -> dict[str, Any]:
    """Write ``model.safetensors`` and ``config.json`` atomically; return the config."""
    from safetensors.torch import save

    from zoo import __version__

    config = model_config(model, input_size=input_size, mean=mean, std=std, label_names=label_names)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"architecture": config["architecture"], "zoo_version": __version__, "format": "pt"}
    if recipe_hash:
        metadata["recipe_hash"] = recipe_hash
    out = Path(out_dir)
    atomic_write_bytes(out / WEIGHTS_NAME, save(state, metadata=metadata))
    atomic_write_json(out / CONFIG_NAME, config)
    return config


def read_config(directory: str | Path) -> dict[str, Any]:
    """Read and check ``config.json`` of a model directory."""
    path = Path(directory) / CONFIG_NAME
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WeightsError(f"{path} is missing; is {directory} a zoo run or export?") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsError(f"{path} is not valid JSON ({e}); re-export the model") from None
    if not isinstance(config, dict):
        raise WeightsError(f"{path} must hold a JSON object, found {type(config).__name__}")
    missing = [k for k in _REQUIRED_KEYS if k not in config]
    if missing:
        raise WeightsError(f"{path} lacks {', '.join(missing)}; re-export the model")
    if not isinstance(config["architecture"], str) or not isinstance(config["model_args"], dict):
        raise WeightsError(f"{path}: 'architecture' must be a string and 'model_args' an object")
    return config


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file; a missing, truncated or corrupted file is a WeightsError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise WeightsError(f"weights file {path} is missing") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise WeightsError(
            f"weights file {path} is corrupted or truncated ({e}); download or export it again"
        ) from None


def load_weights(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Strictly load ``state`` into ``model``, naming every missing, unexpected and
    mis-shaped key."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k}: weights {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(state[k].shape) != tuple(own[k].shape)
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
    model.load_state_dict(state, strict=True)


def load_model_dir(directory: str | Path, plugin: str | None = None, **overrides: Any) -> nn.Module:
    """Rebuild the architecture named in ``config.json`` and load ``model.safetensors``.

    ``overrides`` change model arguments (e.g. ``num_classes``); weights must still fit.
    """
    from zoo import registry

    directory = Path(directory)
    config = read_config(directory)
    args = {**config["model_args"], **overrides}
    try:
        model = registry.create(config["architecture"], plugin=plugin, **args)
    except UnknownModelError:
        dist = config.get("distribution") or "the plugin that provides it"
        raise WeightsError(
            f"{directory / CONFIG_NAME} needs architecture {config['architecture']!r}, which no "
            f"installed plugin provides; install it with `pip install {dist}`"
        ) from None
    load_weights(model, load_state_dict(directory / WEIGHTS_NAME), str(directory))
    return model
