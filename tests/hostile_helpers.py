"""Helpers of the hostile-input catalogue (tests/test_hostile_*.py, issue 15).

Each case asserts: one ``error:`` line naming the culprit, a non-zero exit, nothing outside
the target written or deleted (:func:`snapshot` before, compare after), earlier runs intact.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from click.testing import CliRunner, Result

from zoo.cli import cli

SYNTHETIC = {
    "num_classes": 3,
    "in_chans": 1,
    "img_size": 4,
    "train_size": 16,
    "valid_size": 8,
    "test_size": 8,
    "seed": 0,
}


def tiny_recipe(**changes: Any) -> dict[str, Any]:
    recipe: dict[str, Any] = {
        "name": "tiny",
        "model": {"name": "mlp_relu", "args": {"hidden_sizes": [8]}},
        "data": {"dataset": "synthetic", "batch_size": 8, "synthetic": dict(SYNTHETIC)},
        "optim": {"name": "adam", "lr": 0.01},
        "epochs": 2,
    }
    recipe.update(changes)
    return recipe


def image_folder_recipe(root: Path, classes: Sequence[str]) -> dict[str, Any]:
    """Write ``root/{train,test}/CLASS/i.png`` (8 and 4 grey 8x8 PNGs a class, class ``c``
    about ``100 * c`` brighter, so one epoch learns something) and return a one-epoch
    ``mlp_relu`` recipe that trains on the folder."""
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    for split, n in (("train", 8), ("test", 4)):
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = (torch.rand(8, 8, generator=gen) * 100 + 100 * c).byte().numpy()
                Image.fromarray(pixels, "L").save(root / split / name / f"{i}.png")
    return {
        "name": "folder",
        "model": {"name": "mlp_relu", "args": {"hidden_sizes": [8], "in_chans": 1, "img_size": 8}},
        "data": {"dataset": "imagefolder", "root": str(root), "batch_size": 4, "valid_size": 4},
        "optim": {"name": "adam", "lr": 0.01},
        "epochs": 1,
    }


def write_recipe(path: Path, recipe: dict[str, Any] | str) -> Path:
    text = recipe if isinstance(recipe, str) else yaml.safe_dump(recipe, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return path


def invoke(*args: str, **kwargs: Any) -> Result:
    return CliRunner().invoke(cli, list(args), **kwargs)


def assert_refused(result: Result, *fragments: str) -> str:
    """One ``error:`` line naming every fragment, a non-zero exit, no traceback."""
    assert result.exit_code not in (0, None), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], f"{fragment!r} not in {errors[0]!r}"
    assert "Traceback" not in result.output
    return errors[0]


def snapshot(root: Path) -> dict[str, Any]:
    """Every entry under ``root`` (links not followed): kind and content hash or target."""
    state: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                state[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                state[rel] = ("dir",)
            elif path.is_file():
                state[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
            else:
                state[rel] = ("special",)
    return state


def assert_unchanged(root: Path, before: dict[str, Any]) -> None:
    after = snapshot(root)
    assert after == before, {
        k: (before.get(k), after.get(k))
        for k in before.keys() | after.keys()
        if before.get(k) != after.get(k)
    }
