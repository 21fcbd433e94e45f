"""How recipe modules report a problem: one line naming the file, the key path, the value
and the fix, raised as a :class:`~zoo.errors.RecipeError` that remembers the key path (so
:func:`zoo.recipe.load.load_recipe` can say which ``--set`` override caused it)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NoReturn

from zoo._yaml import kind
from zoo.errors import RecipeError, did_you_mean

__all__ = ["KeyPathError", "fail", "kind", "show", "suggest"]


class KeyPathError(RecipeError):
    """A RecipeError about one key path, so a caller can say which override set it."""

    def __init__(self, message: str, key_path: str) -> None:
        super().__init__(message)
        self.key_path = key_path


def show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def fail(source: str, key_path: str, problem: str, fix: str) -> NoReturn:
    where = f"{source}: {key_path}" if key_path else source
    raise KeyPathError(f"{where}: {problem}; {fix}", key_path)


def suggest(name: str, choices: Iterable[str]) -> str:
    hint = did_you_mean(name, choices).strip()
    return hint or f"valid keys: {', '.join(choices)}"
