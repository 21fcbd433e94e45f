"""Crash-safe file writes: every file zoo writes appears whole or not at all."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from zoo.errors import ZooError

__all__ = ["atomic_open", "atomic_write_bytes", "atomic_write_json", "atomic_write_text"]


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike[str], mode: str = "wb", *, owned: bool = False
) -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on success fsync it and rename it over
    ``path`` (and fsync the directory), on error remove it. Readers never see a partial file.

    A FIFO, device or socket at ``path`` is refused (:class:`ZooError`), unless ``owned``:
    a path only zoo writes (its caches), where such an entry is damage and is replaced."""
    path = Path(path)
    _check_replaceable(path, owned)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:  # name the file asked for, not the temporary one
        raise OSError(e.errno, e.strerror, str(path)) from None
    try:
        # mkstemp makes the file private (0600); give it the mode open() would, so run
        # directories on a shared file system stay readable by the team as usual.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _check_replaceable(path: Path, owned: bool = False) -> None:
    """Refuse to rename over ``path`` when it is a FIFO, a device, a socket or a directory:
    the rename would replace ``/dev/null`` or a named pipe someone reads with a regular file.
    A link is replaced (not followed), as before; a regular file is replaced."""
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None
    if stat.S_ISREG(mode) or stat.S_ISLNK(mode) or (owned and not stat.S_ISDIR(mode)):
        return
    kind = (
        "a directory"
        if stat.S_ISDIR(mode)
        else "a FIFO"
        if stat.S_ISFIFO(mode)
        else "a socket"
        if stat.S_ISSOCK(mode)
        else "a device"
    )
    raise ZooError(
        f"refusing to write {path}: it is {kind}, not a regular file; choose a file path"
    )


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it; put it straight back
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem supports directory fsync
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, owned: bool = False) -> None:
    """``obj`` as JSON, atomically; ``owned`` as in :func:`atomic_open`."""
    with atomic_open(path, "wb", owned=owned) as f:
        f.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))
