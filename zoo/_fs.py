"""Opening untrusted files safely: regular files inside their directory, read with a cap.

Run, export, store and dataset directories may come from someone else. A file in one of
them that is a symlink to ``/etc/passwd`` must not be copied into an export or a Hub push,
a FIFO must not hang the reader, and ``/dev/zero`` must not fill memory. Every reader of
such a file goes through :func:`check_regular` / :func:`open_regular`:

- the path's real location (after following links) must stay inside ``inside`` (by default
  the file's own directory): a link to another file of the same run is fine, a link out is
  refused;
- the target must be a regular file, checked with ``stat`` *before* opening (opening a FIFO
  blocks), and again on the open descriptor (opened with ``O_NONBLOCK | O_NOFOLLOW``);
- :func:`read_capped` stops reading at ``cap + 1`` bytes.

Errors are raised as the caller's :class:`~zoo.errors.ZooError` subclass, one line naming the
file. A missing file raises :class:`FileNotFoundError` so callers keep their own message.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import stat
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import BinaryIO

from zoo._io import atomic_open
from zoo.errors import ZooError

__all__ = [
    "check_dir",
    "check_output_dir",
    "check_regular",
    "copy_regular",
    "file_kind",
    "open_regular",
    "read_capped",
    "remove_entry",
]

_COPY_CHUNK = 1 << 20


def file_kind(mode: int) -> str:
    """``"a FIFO"``, ``"a character device"``, ... for a ``st_mode``."""
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISLNK, "a symlink"),
    ):
        if test(mode):
            return name
    return "a regular file" if stat.S_ISREG(mode) else "not a regular file"


def _real(path: Path, inside: Path, error: type[ZooError], verb: str) -> Path:
    """``path`` with every link followed; refused when that leaves ``inside``."""
    try:
        real = Path(os.path.realpath(path, strict=True))
    except FileNotFoundError:
        raise
    except OSError as e:  # a link loop (ELOOP), a component that is not a directory
        raise error(f"cannot {verb} {path} ({e.strerror or e})") from None
    root = Path(os.path.realpath(inside))
    if real != root and not real.is_relative_to(root) and not _hub_blob(real, root):
        raise error(
            f"refusing to {verb} {path}: it is a link to {real}, outside {inside}; "
            "replace the link with a copy of the file"
        )
    return real


def _hub_blob(real: Path, root: Path) -> bool:
    """Whether ``real`` is a blob of the Hugging Face cache repo whose snapshot is ``root``:
    the cache stores ``models--org--name/snapshots/<sha>/config.json`` as a link to
    ``models--org--name/blobs/<hash>`` (downloads are verified, see zoo.weights.hub)."""
    return root.parent.name == "snapshots" and real.parent == root.parent.parent / "blobs"


def check_regular(
    path: str | os.PathLike[str],
    *,
    inside: str | os.PathLike[str] | None = None,
    error: type[ZooError] = ZooError,
    verb: str = "read",
    single_link: bool = False,
) -> Path:
    """The real path of ``path`` if it is (or links, inside ``inside``, to) a regular file.

    ``inside`` defaults to the file's own directory. Raises ``error`` for a link leaving it,
    a FIFO, device, socket or directory; :class:`FileNotFoundError` when it is missing.
    ``single_link`` (files about to leave the machine: export, push) also refuses a file with
    more than one hard link, which may be any file's content under a publishable name.
    """
    path = Path(path)
    real = _real(path, Path(inside) if inside is not None else path.parent, error, verb)
    info = os.stat(real)
    if not stat.S_ISREG(info.st_mode):
        raise error(
            f"refusing to {verb} {path}: it is {file_kind(info.st_mode)}, not a regular file"
        )
    if single_link:
        check_single_link(path, info, error=error, verb=verb)
    return real


def check_single_link(
    path: Path, info: os.stat_result, *, error: type[ZooError], verb: str
) -> None:
    """Refuse ``path`` when ``info`` (its stat) counts more than one hard link."""
    if info.st_nlink > 1:
        raise error(
            f"refusing to {verb} {path}: it has {info.st_nlink} hard links, so its content may "
            f"belong to a file outside the run; give it its own copy first (cp {path} "
            f"{path}.copy && mv {path}.copy {path})"
        )


def check_dir(
    path: str | os.PathLike[str],
    *,
    inside: str | os.PathLike[str] | None = None,
    error: type[ZooError] = ZooError,
    verb: str = "use",
) -> Path | None:
    """The real path of directory ``path`` (None when it does not exist); refused when it is a
    link leaving ``inside`` (default: its parent) or exists and is not a directory. Used
    before writing into or deleting from a subdirectory such as ``checkpoints/``."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return None
    try:
        real = _real(path, Path(inside) if inside is not None else path.parent, error, verb)
    except FileNotFoundError:  # a dangling link
        raise error(f"refusing to {verb} {path}: it is a broken link; remove it") from None
    mode = os.stat(real).st_mode
    if not stat.S_ISDIR(mode):
        raise error(f"refusing to {verb} {path}: it is {file_kind(mode)}, not a directory")
    return real


def check_output_dir(
    path: str | os.PathLike[str],
    own: Collection[str],
    *,
    force: bool,
    what: str,
    error: type[ZooError] = ZooError,
) -> None:
    """Refuse to write a command's ``own`` entries into an existing directory that holds
    anything else (dotfiles aside), unless ``force``: ``--out`` pointed at a run, a home
    folder or another tool's output would mix with what is there and replace its files of
    the same names. A directory holding only ``own`` entries, an earlier output of the same
    command, is rewritten without asking: regenerating it is the point."""
    path = Path(path)
    if force or not path.is_dir():
        return
    others = sorted(n for n in os.listdir(path) if n not in own and not n.startswith("."))
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if others[3:] else "")
        raise error(
            f"--out {path} already holds other files ({shown}); choose a new or empty "
            f"directory, or add --force to write {what} among them"
        )


@contextlib.contextmanager
def open_regular(
    path: str | os.PathLike[str],
    *,
    inside: str | os.PathLike[str] | None = None,
    error: type[ZooError] = ZooError,
    verb: str = "read",
    single_link: bool = False,
) -> Iterator[BinaryIO]:
    """Open ``path`` for binary reading as :func:`check_regular` allows; the descriptor is
    checked again after opening (the file may have been swapped in between)."""
    real = check_regular(path, inside=inside, error=error, verb=verb, single_link=single_link)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(real, flags)
    except OSError as e:
        raise error(f"cannot read {path} ({e.strerror or e})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(
                f"refusing to {verb} {path}: it is {file_kind(info.st_mode)}, not a regular file"
            )
        if single_link:
            check_single_link(Path(path), info, error=error, verb=verb)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        yield f


def read_capped(
    path: str | os.PathLike[str],
    cap: int,
    *,
    inside: str | os.PathLike[str] | None = None,
    error: type[ZooError] = ZooError,
    fix: str = "the file is damaged",
) -> bytes:
    """The bytes of ``path`` (see :func:`open_regular`); over ``cap`` bytes is refused after
    reading at most ``cap + 1`` of them."""
    with open_regular(path, inside=inside, error=error) as f:
        try:
            # read(n) allocates n bytes up front: ask for what the file says it holds, then
            # go on in chunks in case it grew, never past cap + 1
            size = os.fstat(f.fileno()).st_size
            data = f.read(min(size, cap) + 1)
            more = bytearray()
            while len(data) + len(more) <= cap:
                chunk = f.read(min(_COPY_CHUNK, cap + 1 - len(data) - len(more)))
                if not chunk:
                    break
                more += chunk
            if more:
                data += bytes(more)
        except OSError as e:
            raise error(f"cannot read {path} ({e.strerror or e})") from None
    if len(data) > cap:
        raise error(f"{path} is over {_size(cap)}, more than such a file can be; {fix}")
    return data


def copy_regular(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    inside: str | os.PathLike[str] | None = None,
    error: type[ZooError] = ZooError,
    verb: str = "read",
    single_link: bool = False,
) -> None:
    """Copy the regular file ``src`` (see :func:`open_regular`) to ``dst``, atomically. The
    copy is a new regular file even when ``dst`` is a link: links are replaced, not followed."""
    opened = open_regular(src, inside=inside, error=error, verb=verb, single_link=single_link)
    with opened as f, atomic_open(dst, "wb") as out:
        shutil.copyfileobj(f, out, _COPY_CHUNK)


def remove_entry(path: str | os.PathLike[str]) -> None:
    """Remove ``path`` without following links: a link (even to a directory) is unlinked,
    a real directory removed with its contents (links inside it are unlinked, not followed)."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):g} {unit}"
    return f"{n} bytes"
