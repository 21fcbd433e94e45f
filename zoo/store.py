"""The local weights store: tagged weights, timm style (``mlpmixer_p4.cifar10_best``).

Layout under ``$ZOO_HOME`` (default: the user cache dir, ``~/.cache/zoo``)::

    weights/<model>/<tag>/            an export directory (model.safetensors, config.json, ...)
    weights/<model>/<tag>.json        or a pointer: {"source": "hf-hub:org/repo@rev"}
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["home", "tags_for"]

HOME_ENV = "ZOO_HOME"


def home() -> Path:
    """zoo's data directory: ``$ZOO_HOME``, else ``$XDG_CACHE_HOME/zoo``, else ``~/.cache/zoo``."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "zoo"


def weights_dir(model: str) -> Path:
    return home() / "weights" / model.replace("/", "--")


def tags_for(model: str) -> list[str]:
    """Sorted tags published for ``model`` in the local store (cheap: no torch import)."""
    root = weights_dir(model)
    if not root.is_dir():
        return []
    tags = {p.name for p in root.iterdir() if p.is_dir() and (p / "config.json").is_file()}
    tags |= {p.stem for p in root.glob("*.json") if p.is_file()}
    return sorted(tags)
