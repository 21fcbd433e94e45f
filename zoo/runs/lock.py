"""The run lock: one writer per run directory at a time.

While a process writes a run directory (``zoo train --out/--force/--resume``, one point of a
sweep) it holds ``<run>/.zoo-lock``, a small JSON file with its pid, host and start time,
created atomically with ``O_CREAT | O_EXCL``. A second writer finds the file and is refused
with one line naming the holder; ``zoo export --out`` onto a locked directory is refused the
same way. Directories replaced whole (an export, a published tag) are locked by a file next to
them (:func:`target_lock`), so two exports or publishes onto one target cannot both succeed.

A lock whose pid no longer runs on this host is stale (the holder was killed): it is taken
over with a warning that says so. A lock from another host cannot be checked and is never
taken over; the message says how to remove it.

The directory is created when the lock is taken; if the holder leaves it with nothing but
the lock in it (the run failed before writing anything), it is removed again on release.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from zoo.errors import RunError

LOCK_NAME = ".zoo-lock"  # in a run directory while a process writes it

__all__ = ["LOCK_NAME", "check_unlocked", "command_line", "holder", "run_lock", "target_lock"]

log = logging.getLogger(__name__)
_MAX_LOCK_BYTES = 4096


def holder(run_dir: str | Path) -> dict[str, Any] | None:
    """Who holds the lock of ``run_dir`` (``{"pid", "host", "started", "command"}``), or
    None when nobody does. A lock file being written (empty or partial) counts as held."""
    return _read_lock(Path(run_dir) / LOCK_NAME)


def _read_lock(path: Path) -> dict[str, Any] | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno != errno.ELOOP:  # no such directory, a name too long: nothing holds it
            return None
        # a link in place of the lock: held by nobody we can name, refuse anyway
        return {"pid": None, "host": "?", "started": None, "command": "?"}
    with os.fdopen(fd, "rb") as f:
        raw = f.read(_MAX_LOCK_BYTES)
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        data = None
    if not isinstance(data, dict):
        return {"pid": None, "host": "?", "started": None, "command": "?"}
    return data


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return True  # unknown: assume it runs
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_stale(info: dict[str, Any]) -> bool:
    return info.get("host") == socket.gethostname() and not _alive(info.get("pid"))


def _describe(info: dict[str, Any]) -> str:
    started = info.get("started")
    when = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(started)) if started else ""
    return f"pid {info.get('pid')} on {info.get('host')}{when} ({info.get('command') or '?'})"


def _refusal(run_dir: Path, info: dict[str, Any], what: str, lock: Path | None = None) -> RunError:
    path = lock or run_dir / LOCK_NAME
    if info.get("pid") is None:  # a link, garbage, or a lock being written this instant
        return RunError(
            f"cannot {what} {run_dir}: {path} is there but is not a lock zoo can read (a "
            f"link or a damaged file); if no zoo process writes {run_dir}, remove {path}"
        )
    remote = info.get("host") != socket.gethostname()
    fix = (
        f"if that process is gone, remove {lock or run_dir / LOCK_NAME}"
        if remote
        else "wait for it to finish or stop it, or choose another directory"
    )
    return RunError(f"cannot {what} {run_dir}: it is being written by {_describe(info)}; {fix}")


def check_unlocked(run_dir: str | Path, what: str = "write") -> None:
    """Refuse when a live process holds the lock of ``run_dir``."""
    run_dir = Path(run_dir)
    info = holder(run_dir)
    if info is None or _is_stale(info) or _is_mine(info):
        return  # nobody, a dead process, or this process (a run exporting its own weights)
    raise _refusal(run_dir, info, what)


def _is_mine(info: dict[str, Any]) -> bool:
    return info.get("host") == socket.gethostname() and info.get("pid") == os.getpid()


def command_line() -> str:
    """This process's command line, shortened, to name a lock's holder."""
    text = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "?"
    return text if len(text) <= 200 else text[:197] + "..."


def _create(path: Path, command: str) -> bool:
    """Create the lock file atomically; False when it already exists."""
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.time(),
        "command": command,
    }
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(record, f)
    return True


@contextlib.contextmanager
def run_lock(run_dir: str | Path, what: str = "train into", command: str = "zoo") -> Iterator[Path]:
    """Hold the lock of ``run_dir`` inside the block (creating the directory if needed).

    Raises :class:`RunError` naming the holder when a live process holds it; takes over a
    stale lock of a dead process on this host with a warning."""
    run_dir = Path(run_dir)
    created = _make_dirs(run_dir)
    try:
        with _held(run_dir / LOCK_NAME, run_dir, what, command) as path:
            yield path
    finally:
        _remove_created(created)


@contextlib.contextmanager
def target_lock(target: str | Path, what: str, command: str = "zoo") -> Iterator[Path]:
    """Hold a lock on ``target``, a directory that is replaced whole (an export, a stored
    tag), inside the block. The lock file lives next to it (``.NAME.zoo-lock``), because the
    directory itself is swapped out. Refusal and stale locks as in :func:`run_lock`; the
    parent directory is created if needed."""
    target = Path(target)
    created = _make_dirs(target.parent)
    try:
        with _held(target.parent / f".{target.name}{LOCK_NAME}", target, what, command) as path:
            yield path
    finally:
        _remove_created(created)


@contextlib.contextmanager
def _held(path: Path, target: Path, what: str, command: str) -> Iterator[Path]:
    for _ in range(3):  # a lost race with another taker of a stale lock: look again
        if _create(path, command):
            break
        info = _read_lock(path)
        if info is None:
            continue  # released between our create and our read
        if not _is_stale(info):
            raise _refusal(target, info, what, path)
        log.warning("taking over the stale lock of %s: %s no longer runs", target, _describe(info))
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    else:
        raise RunError(f"cannot lock {target}: its lock keeps changing; try again")
    try:
        yield path
    finally:
        mine = _read_lock(path)
        if mine is not None and mine.get("pid") == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _make_dirs(run_dir: Path) -> list[Path]:
    """``mkdir -p run_dir``; the directories it created, deepest first."""
    created = []
    try:
        for directory in (run_dir, *run_dir.parents):
            if directory.exists() or directory.is_symlink():
                break
            created.append(directory)
        run_dir.mkdir(parents=True, exist_ok=True)
    except ValueError as e:  # a NUL byte
        raise RunError(
            f"cannot create run directory {run_dir!r} ({e}); choose another --out"
        ) from None
    except OSError as e:
        raise RunError(
            f"cannot create run directory {run_dir} ({e.strerror or e}); choose another --out"
        ) from None
    return created


def _remove_created(created: list[Path]) -> None:
    """Remove the directories :func:`_make_dirs` created, if nothing was written in them."""
    for directory in created:
        try:
            directory.rmdir()
        except OSError:
            return
