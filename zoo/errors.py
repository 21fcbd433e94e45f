"""Errors a user can cause.

Every error zoo raises on purpose is a :class:`ZooError`. Its message says what was wrong,
the offending value, and the fix or the closest valid choices. The CLI prints it as one line
and exits with :attr:`ZooError.exit_code`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ZooError(Exception):
    """Base class of every error a user can cause."""

    exit_code = 2


class UnknownModelError(ZooError):
    """No registered model has that name."""


class AmbiguousModelError(ZooError):
    """Two distributions register the same name; the caller must pick one."""


class DuplicateModelError(ZooError):
    """One distribution registers one name twice."""


class ModelArgumentError(ZooError):
    """A builder was given a keyword argument it does not accept, or a bad value."""


class PluginError(ZooError):
    """A plugin could not be loaded or does not follow the plugin contract."""


class RecipeError(ZooError):
    """A recipe file is malformed or fails validation."""


class DataError(ZooError):
    """A dataset is missing, malformed, or asked for with impossible settings."""


class WeightsError(ZooError):
    """Weights are missing, corrupted, or do not fit the architecture."""


class HubError(ZooError):
    """A Hugging Face Hub operation failed."""


class RunError(ZooError):
    """A run directory is missing, incomplete, or would be overwritten."""


class ExportError(ZooError):
    """A deployment export (ONNX, TorchScript, ExportedProgram) cannot be made or does not
    match the PyTorch model, or the optional packages it needs are not installed."""


class TrainingError(ZooError):
    """Training stopped because continuing would be meaningless (e.g. NaN loss)."""

    exit_code = 1


def printable(text: str) -> str:
    """``text`` with control characters (newlines, terminal escapes, ...) written as Python
    escapes, so that a name from a file or the command line prints as what it is, on one line,
    and cannot move the cursor or recolour the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def did_you_mean(name: str, choices: Iterable[str], n: int = 3) -> str:
    """Return ``" Did you mean: a, b?"`` for the closest choices, or ``""`` when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
    return f" Did you mean: {', '.join(close)}?" if close else ""
