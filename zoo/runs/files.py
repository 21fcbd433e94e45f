"""The run directory format: its file names, and the one reader and writer of each file.

A run directory (``runs/<name>/<timestamp>``, one point of a sweep, or an export of either)
holds::

    recipe.yaml     the fully resolved recipe                      (training writes it first)
    metrics.jsonl   one JSON object per finished epoch
    checkpoints/    last.json + last.safetensors (zoo.training.checkpoint)
    model.safetensors, config.json                                 (zoo.weights.files)
    summary.json    test metrics, best epoch, precision, environment (written last: marks done)
    README.md       the model card (zoo.runs.card), curves.png (zoo.runs.plots)
    sweep.json      in a sweep's root: its points and their state (zoo.training.sweep)

Every module that reads or writes these files goes through this one: readers are strict
(a damaged line is an error naming the file and line, never silently skipped), capped in
size, and parse YAML with zoo's guarded loader.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, overload

from zoo._fs import read_capped, remove_entry
from zoo._io import atomic_write_json, atomic_write_text
from zoo._yaml import parse_yaml
from zoo.devices import PRECISIONS
from zoo.errors import RecipeError, RunError, ZooError
from zoo.runs.lock import LOCK_NAME, check_unlocked  # the lock: one writer per run

__all__ = [
    "CARD_NAME",
    "CHECKPOINT_DIR",
    "CONFIG_NAME",
    "CURVES_NAME",
    "LOCK_NAME",
    "METRICS_NAME",
    "RECIPE_NAME",
    "RUN_FILES",
    "SUMMARY_NAME",
    "SWEEP_INDEX_NAME",
    "WEIGHTS_NAME",
    "check_recipe",
    "check_run_dir",
    "claim_run_dir",
    "default_run_dir",
    "finite",
    "history_problem",
    "is_run_dir",
    "never_started",
    "read_json",
    "read_metrics",
    "read_recipe_data",
    "read_recipe_text",
    "read_text",
    "trained_precision",
    "write_errors",
    "write_metrics",
    "write_recipe",
    "write_summary",
]

RECIPE_NAME = "recipe.yaml"
METRICS_NAME = "metrics.jsonl"
SUMMARY_NAME = "summary.json"
CHECKPOINT_DIR = "checkpoints"
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
CURVES_NAME = "curves.png"
SWEEP_INDEX_NAME = "sweep.json"
TENSORBOARD_DIR = "tensorboard"
_RECIPE_HASH_LINE = "# written by zoo; sha256 of the recipe below: "
RUN_FILES = (
    RECIPE_NAME,
    METRICS_NAME,
    SUMMARY_NAME,
    CHECKPOINT_DIR,
    WEIGHTS_NAME,
    CONFIG_NAME,
    CARD_NAME,
    CURVES_NAME,
    SWEEP_INDEX_NAME,
    TENSORBOARD_DIR,
)
# A run's text files are small: a million epochs of metrics is still under this. Anything
# bigger (or endless, like /dev/zero) is damage or an attack, refused before it fills memory.
MAX_TEXT_BYTES = 64 << 20


# -- where a run goes ----------------------------------------------------------------------


def default_run_dir(name: str, now: datetime | None = None) -> Path:
    """``runs/<name>/<local time, YYYYmmdd-HHMMSS>``."""
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / name / stamp


def is_run_dir(directory: Path) -> bool:
    """Whether ``directory`` looks like a run (it has metrics or a recipe)."""
    return (directory / METRICS_NAME).is_file() or (directory / RECIPE_NAME).is_file()


def claim_run_dir(run_dir: Path, force: bool) -> None:
    """Create ``run_dir``; an existing non-empty one is refused unless ``force``."""
    check_run_dir(run_dir, force)
    if _has_entries(run_dir):
        _clear_run_files(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)


def _has_entries(run_dir: Path) -> bool:
    """Whether ``run_dir`` is a directory holding anything of a run (see :func:`never_started`)."""
    return run_dir.is_dir() and not never_started(run_dir)


def never_started(run_dir: Path) -> bool:
    """Whether the directory ``run_dir`` holds nothing of a run: at most its lock and the
    temporary files of atomic writes that a kill cut short (``.recipe.yaml.*.tmp``), as a
    run killed before it recorded its recipe leaves. Such a directory takes a new run
    without ``--force``."""
    return all(
        p.name == LOCK_NAME or (p.name.startswith(".") and p.name.endswith(".tmp"))
        for p in run_dir.iterdir()
    )


def check_run_dir(run_dir: Path, force: bool) -> None:
    """Refuse ``run_dir`` if it is a file, or not empty and not ``force``; create nothing."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"output path {run_dir} exists and is not a directory; choose another --out")
    if _has_entries(run_dir) and not force:
        resumable = (run_dir / CHECKPOINT_DIR).is_dir() or not (run_dir / WEIGHTS_NAME).exists()
        hint = f"continue it with `zoo train --resume {run_dir}`, " if resumable else ""
        raise RunError(
            f"output directory {run_dir} already exists and is not empty; {hint}choose another "
            "--out, or overwrite it with --force"
        )


def _clear_run_files(run_dir: Path) -> None:
    # Only the files a run writes: --force on a directory holding other things keeps them.
    # Links are removed, never followed, and nothing is removed through a linked run_dir.
    if run_dir.is_symlink():
        raise RunError(
            f"refusing to overwrite {run_dir} with --force: it is a link to "
            f"{run_dir.resolve()}; give the directory itself as --out"
        )
    points = _sweep_point_dirs(run_dir)  # a sweep's points are its files too ...
    for name in points:  # ... unless a live process writes one: refused before any removal
        check_unlocked(run_dir / name, "overwrite with --force the sweep point")
    try:
        for name in points:
            remove_entry(run_dir / name)
        for name in RUN_FILES:
            remove_entry(run_dir / name)
    except OSError as e:
        raise RunError(
            f"cannot clear {run_dir} for --force ({e.strerror or e}: {e.filename}); "
            "fix its permissions or choose another --out"
        ) from None


def _sweep_point_dirs(run_dir: Path) -> list[str]:
    """The point directories ``run_dir/sweep.json`` names (plain names inside ``run_dir``
    only; an unreadable index names none: --force then keeps them, as other files)."""
    try:
        index = read_json(run_dir / SWEEP_INDEX_NAME, missing_ok=True) or {}
    except ZooError:
        return []
    points = index.get("points") if isinstance(index, dict) else None
    names = [
        p.get("run_dir") or p.get("name") for p in points or [] if isinstance(p, dict)
    ] if isinstance(points, list) else []  # fmt: skip
    return [
        n
        for n in names
        if isinstance(n, str) and n not in ("", ".", "..") and "/" not in n and "\0" not in n
    ]


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


# -- readers -------------------------------------------------------------------------------


def read_text(path: Path, *, missing_ok: bool = False) -> str | None:
    """The UTF-8 text of ``path`` (None if it is missing and ``missing_ok``); at most
    :data:`MAX_TEXT_BYTES`, read as a regular file inside its directory (zoo._fs)."""
    try:
        # a link leaving the run, a FIFO or a device is refused before it is opened
        raw = read_capped(path, MAX_TEXT_BYTES, error=RunError, fix="the run is damaged")
    except FileNotFoundError:
        if missing_ok and not path.is_symlink():
            return None
        raise RunError(f"{path} is missing; is {path.parent} a zoo run directory?") from None
    except OSError as e:
        raise RunError(f"cannot read {path} ({e.strerror or e}); the run is damaged") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RunError(f"{path} is not UTF-8 text (byte {e.start}); the run is damaged") from None


@overload
def read_json(path: Path) -> dict[str, Any]: ...
@overload
def read_json(path: Path, *, missing_ok: bool) -> dict[str, Any] | None: ...
def read_json(path: Path, *, missing_ok: bool = False) -> dict[str, Any] | None:
    """The JSON object in ``path`` (None if missing and ``missing_ok``)."""
    text = read_text(path, missing_ok=missing_ok)
    if text is None:
        return None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:  # bad JSON, too deeply nested, a huge integer
        raise RunError(f"{path} is not valid JSON ({e}); the run directory is damaged") from None
    if not isinstance(data, dict):
        raise RunError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


def read_metrics(run_dir: Path, *, missing_ok: bool = False) -> list[dict[str, Any]]:
    """The per-epoch records of ``metrics.jsonl`` (blank lines skipped). A line that is not
    a JSON object, or whose ``epoch`` is not an integer, is an error naming its number."""
    path = Path(run_dir) / METRICS_NAME
    text = read_text(path, missing_ok=missing_ok)
    rows = []
    for number, line in enumerate((text or "").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as e:  # bad JSON, too deep, a huge integer
            raise RunError(
                f"{path} line {number} is not valid JSON ({e}); fix or remove it"
            ) from None
        if not isinstance(row, dict):
            raise RunError(f"{path} line {number} is not a JSON object; fix or remove it")
        epoch = row.get("epoch")
        if "epoch" in row and (isinstance(epoch, bool) or not isinstance(epoch, int)):
            raise RunError(f"{path} line {number}: epoch {epoch!r} is not an integer")
        rows.append(row)
    return rows


def history_problem(
    rows: Sequence[Mapping[str, Any]],
    epoch: int,
    saved: Sequence[Mapping[str, Any]] | None = None,
) -> str | None:
    """What is wrong with ``rows`` (of :func:`read_metrics`) as the history of a run whose
    checkpoint holds ``epoch`` epochs, or None when they are epochs 1 to ``epoch`` in order,
    perhaps followed by ``epoch + 1`` (a run stopped between writing that epoch's metrics and
    its checkpoint leaves it; the resumed run trains that epoch again), and, given the
    checkpoint's own copy (``saved``), equal to it."""
    epochs = [row.get("epoch") for row in rows]
    expected = list(range(1, epoch + 1))
    if epochs[:epoch] == expected and epochs[epoch:] in ([], [epoch + 1]):
        if saved is None:
            return None
        differ = [e for e, a, b in zip(expected, rows, saved, strict=False) if a != finite(b)]
        return f"its records of {_epochs(differ)} were changed" if differ else None
    problems = [f"line {i} has no epoch" for i, e in enumerate(epochs, start=1) if e is None]
    have = [e for e in epochs if isinstance(e, int)]
    missing = sorted(set(expected) - set(have))
    if missing:
        problems.append(f"it lacks {_epochs(missing)}")
    twice = sorted({e for e in have if have.count(e) > 1})
    if twice:
        problems.append(f"it holds {_epochs(twice)} more than once")
    later = sorted({e for e in have if not 1 <= e <= epoch + 1})
    if later:
        problems.append(f"it holds {_epochs(later)}, which the checkpoint does not")
    if not problems:
        problems.append(f"its epochs are out of order ({', '.join(map(str, have))})")
    return "; ".join(problems)


def _epochs(numbers: Sequence[int]) -> str:
    """``epoch 3`` or ``epochs 1-3, 5``."""
    spans: list[list[int]] = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)
    return f"epoch{'s' if len(numbers) > 1 else ''} {text}"


def read_recipe_data(run_dir: Path, *, missing_ok: bool = True) -> dict[str, Any] | None:
    """``recipe.yaml`` as plain data, parsed by the guarded YAML loader (no validation:
    a recipe of a plugin that is not installed still reads). None when it is missing."""
    path = Path(run_dir) / RECIPE_NAME
    text = read_text(path, missing_ok=missing_ok)
    if text is None:
        return None
    try:
        data = parse_yaml(text, str(path))
    except RecipeError as e:
        raise RunError(f"{e} (the run directory is damaged)") from None
    return data if isinstance(data, dict) else {}


# -- writers -------------------------------------------------------------------------------


def write_recipe(run_dir: Path, text: str) -> None:
    """``recipe.yaml``, headed by a comment recording the sha256 of the recipe below it, so
    that an edit made after the run wrote it is detected (:func:`check_recipe`)."""
    atomic_write_text(Path(run_dir) / RECIPE_NAME, f"{_RECIPE_HASH_LINE}{_sha256(text)}\n{text}")


def read_recipe_text(run_dir: Path) -> str | None:
    """``recipe.yaml`` without its hash comment (None when missing)."""
    text = read_text(Path(run_dir) / RECIPE_NAME, missing_ok=True)
    if text is not None and text.startswith(_RECIPE_HASH_LINE):
        text = text.partition("\n")[2]
    return text


def check_recipe(run_dir: Path) -> None:
    """Refuse a ``recipe.yaml`` edited after the run wrote it: the recipe the card and a
    resume would use must be the one that trained. Recipes written before the hash comment
    existed are accepted as they are."""
    path = Path(run_dir) / RECIPE_NAME
    text = read_text(path, missing_ok=True)
    if text is None or not text.startswith(_RECIPE_HASH_LINE):
        return
    first, _, rest = text.partition("\n")
    if first[len(_RECIPE_HASH_LINE) :].strip() != _sha256(rest):
        raise RunError(
            f"{path} was edited after the run wrote it (it no longer matches the sha256 "
            f"recorded in its first line), so it is not the recipe that trained; undo the "
            f"edit, or train the edited recipe as a new run: `zoo train {path} --out NEW_DIR`"
        )


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_metrics(run_dir: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """All epochs' records, one JSON object per line, replacing the file atomically. A value
    that is not a finite number (the accuracy of an empty validation split) is written as
    standard JSON ``null``, never as a bare ``NaN`` other readers refuse."""
    text = "".join(json.dumps(finite(r), allow_nan=False) + "\n" for r in rows)
    atomic_write_text(Path(run_dir) / METRICS_NAME, text)


def trained_precision(recipe: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    """The precision a run computed in: summary.json's ``precision.chosen`` (zoo records
    what ``precision: auto`` chose), else the recipe's ``precision``; runs from before
    ``auto`` existed say fp32 or nothing (fp32 was the default)."""
    recorded = summary.get("precision")
    chosen = recorded.get("chosen") if isinstance(recorded, Mapping) else None
    if chosen in PRECISIONS:
        return str(chosen)
    stated = recipe.get("precision")
    return str(stated) if stated in ("bf16", "fp16") else "fp32"


def write_summary(run_dir: Path, summary: Mapping[str, Any]) -> None:
    atomic_write_json(Path(run_dir) / SUMMARY_NAME, finite(summary))


def finite(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None, recursively (what
    :func:`write_metrics` and :func:`write_summary` write)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value
