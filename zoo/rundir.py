"""Run directories: where a run goes, claiming one, resuming one, and what follows training.

A finished run directory holds::

    recipe.yaml  metrics.jsonl  summary.json  checkpoints/  model.safetensors  config.json
    curves.png  README.md

:mod:`zoo.train` fills it; this module decides where it is (:func:`default_run_dir`),
whether it may be written (:func:`claim_run_dir`) or continued (:func:`resume_recipe`), and
adds curves, model card and publishing once training is done (:func:`after_run`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo.checkpoint import CHECKPOINT_DIR
from zoo.errors import RunError, ZooError

if TYPE_CHECKING:
    from zoo.recipe import Recipe

__all__ = [
    "RUN_FILES",
    "after_run",
    "check_run_dir",
    "claim_run_dir",
    "default_run_dir",
    "read_metrics",
    "resume_recipe",
    "write_errors",
]

# The trainer's logger, whose INFO lines the CLI shows (as zoo.progress does).
log = logging.getLogger("zoo.train")

RUN_FILES = (
    "recipe.yaml",
    "metrics.jsonl",
    "summary.json",
    CHECKPOINT_DIR,
    "model.safetensors",
    "config.json",
    "README.md",
    "curves.png",
    "sweep.json",
    "tensorboard",
)
# Keys that may change when resuming: more epochs, another device, where to publish.
_RESUMABLE_CHANGES = ("epochs", "device", "publish.")


def default_run_dir(recipe: Recipe, now: datetime | None = None) -> Path:
    """``runs/<recipe name>/<local time, YYYYmmdd-HHMMSS>``."""
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / recipe.name / stamp


def claim_run_dir(run_dir: Path, force: bool) -> None:
    """Create ``run_dir``; an existing non-empty one is refused unless ``force``."""
    check_run_dir(run_dir, force)
    if run_dir.is_dir() and any(run_dir.iterdir()):
        _clear_run_files(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)


def check_run_dir(run_dir: Path, force: bool) -> None:
    """Refuse ``run_dir`` if it is a file, or not empty and not ``force``; create nothing."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"output path {run_dir} exists and is not a directory; choose another --out")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not force:
        raise RunError(
            f"output directory {run_dir} already exists and is not empty; continue it with "
            f"`zoo train --resume {run_dir}`, choose another --out, or overwrite it with "
            "--force"
        )


def _clear_run_files(run_dir: Path) -> None:
    # Only the files a run writes: --force on a directory holding other things keeps them.
    for name in RUN_FILES:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def resume_recipe(run_dir: Path, recipe: Recipe | None) -> Recipe:
    """The recipe to resume ``run_dir`` with: its own, or ``recipe`` if it matches."""
    from zoo.recipe import load_recipe

    path = run_dir / "recipe.yaml"
    if not path.is_file():
        raise RunError(f"cannot resume {run_dir}: it holds no recipe.yaml, so it is not a zoo run")
    stored = load_recipe(path)
    if recipe is None:
        return stored
    old, new = _flatten(stored.to_dict()), _flatten(recipe.to_dict())
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    blocking = [k for k in changed if not k.startswith(_RESUMABLE_CHANGES)]
    if blocking:
        shown = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in blocking[:6])
        raise RunError(
            f"cannot resume {run_dir} with a different recipe ({shown}); resume with the run's "
            f"own recipe (`zoo train --resume {run_dir}`) or start a new run with --out"
        )
    if changed:
        log.warning("resuming %s with changed %s", run_dir, ", ".join(changed))
    return recipe


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of ``run_dir/metrics.jsonl`` (none if it is missing); a line that is not
    JSON is skipped."""
    rows = []
    path = run_dir / "metrics.jsonl"
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        with contextlib.suppress(json.JSONDecodeError):
            rows.append(json.loads(line))
    return rows


@contextlib.contextmanager
def write_errors(run_dir: Path, what: str, kept: int) -> Iterator[None]:
    """A failed write (full disk, lost mount) becomes one line that says what was kept.
    The atomic writes have already removed their temporary files."""
    try:
        yield
    except OSError as e:
        if kept:
            then = (
                f"epoch {kept} is the last complete checkpoint. Free space, then continue "
                f"with `zoo train --resume {run_dir}`"
            )
        else:
            then = "no epoch was checkpointed. Free space, then train again with --force"
        raise RunError(f"cannot write {what} in {run_dir} ({e.strerror or e}); {then}") from None


def after_run(run_dir: Path, recipe: Recipe) -> None:
    """Curves, model card, local tag and Hub push. The run is complete without them, so a
    failure here is logged with the command that retries it, not raised."""
    import importlib

    # curves first: the card embeds curves.png when it exists
    for module, function in (("zoo.plots", "plot_run"), ("zoo.card", "write_card")):
        try:
            target = getattr(importlib.import_module(module), function)
        except (ImportError, AttributeError) as e:
            log.info("skipping %s.%s (not available: %s)", module, function, e)
            continue
        try:
            target(run_dir)
        except Exception as e:  # a cosmetic step must not lose a finished run
            log.warning("%s.%s(%s) failed: %s", module, function, run_dir, e)
    tag, repo = recipe.publish.tag, recipe.publish.hub
    if tag:
        _publish_step(
            f"zoo publish {run_dir} --tag {tag}", "zoo.store", "publish", run_dir, None, tag
        )
    if repo:
        _publish_step(
            f"zoo push {run_dir} {repo}",
            "zoo.hub",
            "push",
            run_dir,
            repo,
            private=recipe.publish.private,
        )


def _publish_step(retry: str, module: str, function: str, *args: Any, **kwargs: Any) -> None:
    import importlib

    try:
        result = getattr(importlib.import_module(module), function)(*args, **kwargs)
    except (ImportError, AttributeError) as e:
        log.warning("cannot %s: %s.%s is not available (%s)", retry, module, function, e)
    except ZooError as e:
        log.error("%s failed: %s; retry with `%s`", function, e, retry)
    else:
        log.info("%s: %s", function, result)
