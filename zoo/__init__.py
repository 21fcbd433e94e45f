"""zoo: a plugin-based model zoo for PyTorch image classifiers.

``import zoo`` is cheap: torch is imported only when a model is built.
"""

from __future__ import annotations

from typing import Any

from zoo._version import __version__
from zoo.errors import ZooError
from zoo.models.registry import register_model
from zoo.models.scripts import import_all as _import_all
from zoo.weights.factory import create, list_models, model_info

__all__ = [
    "ZooError",
    "__version__",
    "create",
    "create_transform",
    "import_models",
    "list_models",
    "model_info",
    "register_model",
    "resolve_data_config",
    "testing",
]

# Public names whose modules import torch: loaded on first use (see __getattr__).
_LAZY = {
    "create_transform": "zoo.data.transforms",
    "resolve_data_config": "zoo.data.transforms",
}


def import_models(*sources: str) -> list[str]:
    """Import files (``my_models.py``) or modules whose ``@zoo.register_model`` builders a
    run or export needs; returns their absolute paths or module names."""
    return _import_all(sources)


def __getattr__(name: str) -> Any:
    # Submodules that import torch are loaded on first use, so `zoo --help` stays fast.
    if name == "testing":
        import zoo.testing

        return zoo.testing
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")
