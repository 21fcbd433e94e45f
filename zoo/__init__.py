"""zoo: a plugin-based model zoo for PyTorch image classifiers.

``import zoo`` is cheap: torch is imported only when a model is built.
"""

from __future__ import annotations

from typing import Any

from zoo.errors import ZooError
from zoo.registry import create, list_models, model_info, register_model

__version__ = "0.1.0"

__all__ = [
    "ZooError",
    "__version__",
    "create",
    "list_models",
    "model_info",
    "register_model",
    "testing",
]


def __getattr__(name: str) -> Any:
    # Submodules that import torch are loaded on first use, so `zoo --help` stays fast.
    if name == "testing":
        import zoo.testing

        return zoo.testing
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")
