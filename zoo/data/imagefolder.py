"""Your own images: a folder of class folders, as the same in-memory splits the built-ins use.

Layout (torchvision's ImageFolder)::

    ROOT/train/<class>/*.png|jpg|...    required; classes = the sorted folder names
    ROOT/val/<class>/...                optional; else valid_size images are held out of train/
    ROOT/test/<class>/...               optional; else the test metrics come from the validation
                                        split, and DataBundle.notes says so

Images are converted to ``in_chans`` and resized to ``img_size`` by
:func:`zoo.data.images.read_image`. :func:`build` decodes the folder ONCE, in a thread pool,
into one uint8 (N, C, H, W) tensor per split, and caches them (safetensors, written
atomically) under ``default_root()/imagefolder-cache``, keyed by the folder's content
(relative paths, sizes, mtimes), ``in_chans`` and ``img_size``: the second run decodes
nothing. A folder whose decoded
size exceeds the memory budget (:func:`memory_budget`) is streamed instead
(:mod:`zoo.data.streamed`), after one cached scan that finds its unreadable files and the pixel
sums for mean/std.

Bad folders fail with one line each: a missing root, no train/, no classes, an empty class,
val/ or test/ classes that differ from train/, a symlink out of the root, too many unreadable
images. Files that are not images, and hidden entries (``.*``), are skipped.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import os
import signal
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from zoo._io import atomic_write_bytes, atomic_write_json, atomic_write_text
from zoo.data.datasets import (
    DataBundle,
    Split,
    channel_stats,
    default_root,
    hold_out,
    take_first,
)
from zoo.data.images import IMAGE_EXTENSIONS, UnreadableImage, quiet_decoder, read_image
from zoo.data.streamed import PixelSums, Scan
from zoo.errors import DataError

__all__ = ["CACHE_DIR", "MEMORY_ENV", "build", "memory_budget"]

log = logging.getLogger(__name__)

SPLIT_DIRS = ("train", "val", "test")
CACHE_DIR = "imagefolder-cache"
CACHE_VERSION = "1"
MEMORY_ENV = "ZOO_IMAGEFOLDER_MEMORY"
_CHUNK = 256  # images per task of a decoding thread or DataLoader worker


# --------------------------------------------------------------------------------------------
# The folder
# --------------------------------------------------------------------------------------------


@dataclass
class _Listing:
    root: Path
    classes: tuple[str, ...] = ()
    files: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # split -> (rel, label)
    stats: list[tuple[str, int, int]] = field(default_factory=list)  # (rel, size, mtime_ns)
    not_images: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)


def _list_folder(root: Path) -> _Listing:
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a folder"
        raise DataError(
            f"imagefolder root {root} {what}; set data.root to a folder holding train/<class>/"
            "images (and optionally val/ and test/)."
        )
    listing = _Listing(root)
    real_root = os.path.realpath(root)
    if not (root / "train").is_dir():
        raise DataError(
            f"imagefolder root {root} has no train/ folder; put the training images in "
            f"{root}/train/<class name>/ (optionally val/ and test/ alike)."
        )
    per_split: dict[str, dict[str, list[str]]] = {}
    for split in SPLIT_DIRS:
        if not (root / split).is_dir():
            continue
        real = os.path.realpath(root / split)
        if not real.startswith(real_root + os.sep):
            listing.outside.append(split)
            continue
        per_split[split] = _class_files(root, split, real_root, listing)
    if listing.outside:
        shown = ", ".join(listing.outside[:5]) + (" ..." if len(listing.outside) > 5 else "")
        raise DataError(
            f"{len(listing.outside)} symlink(s) under {root} point outside it: {shown}; "
            "copy those files into the folder instead (links out of the root are not followed)."
        )
    classes = sorted(per_split["train"])
    if not classes:
        raise DataError(
            f"{root}/train has no class folders; put each class's images in "
            f"{root}/train/<class name>/."
        )
    empty = [c for c in classes if not per_split["train"][c]]
    if empty:
        raise DataError(
            f"class folder(s) with no images in {root}/train: {', '.join(empty)}; add images "
            f"({', '.join(IMAGE_EXTENSIONS)}) or remove the folder(s)."
        )
    for split in ("val", "test"):
        if split in per_split:
            _check_same_classes(root, split, classes, sorted(per_split[split]))
    listing.classes = tuple(classes)
    index = {c: i for i, c in enumerate(classes)}
    for split, by_class in per_split.items():
        listing.files[split] = [(rel, index[c]) for c in classes for rel in by_class.get(c, [])]
        if not listing.files[split]:
            raise DataError(f"{root}/{split} holds no images; add some or remove the folder.")
    return listing


def _check_same_classes(root: Path, split: str, classes: list[str], found: list[str]) -> None:
    missing = [c for c in classes if c not in found]
    extra = [c for c in found if c not in classes]
    if missing or extra:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"not in train/: {', '.join(extra)}"] if extra else []
        )
        raise DataError(
            f"{root}/{split} has other classes than train/ ({'; '.join(parts)}); give "
            f"{split}/ the same class folders as train/."
        )


def _class_files(root: Path, split: str, real_root: str, listing: _Listing) -> dict[str, list[str]]:
    """class name -> sorted image paths relative to ``root``, walking each class folder
    recursively; links out of ``root`` are recorded in ``listing.outside``, never followed."""
    result: dict[str, list[str]] = {}
    for entry in _entries(root / split, root, real_root, listing):
        if entry.is_dir():
            result[entry.name] = sorted(_walk(Path(entry.path), root, real_root, listing))
        else:
            listing.not_images.append(_rel(entry.path, root))
    return result


def _rel(path: str, root: Path) -> str:
    """``path`` (under ``root``, as os.scandir spells it) relative to ``root``; cheaper than
    os.path.relpath, which a folder of 100,000 images would call 100,000 times."""
    return path[len(os.path.join(root, "")) :]


def _entries(
    directory: Path, root: Path, real_root: str, listing: _Listing
) -> Iterator[os.DirEntry[str]]:
    """Non-hidden entries of ``directory``, without links that leave the root."""
    with os.scandir(directory) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_symlink():
            real = os.path.realpath(entry.path)
            if real != real_root and not real.startswith(real_root + os.sep):
                listing.outside.append(_rel(entry.path, root))
                continue
        yield entry


def _walk(directory: Path, root: Path, real_root: str, listing: _Listing) -> Iterator[str]:
    seen = {os.path.realpath(directory)}
    stack = [directory]
    cut = len(os.path.join(root, ""))
    while stack:
        for entry in _entries(stack.pop(), root, real_root, listing):
            rel = entry.path[cut:]
            if entry.is_dir():
                real = os.path.realpath(entry.path)
                if real not in seen:  # a link back up would loop forever
                    seen.add(real)
                    stack.append(Path(entry.path))
            elif entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS):
                st = entry.stat()
                listing.stats.append((rel, st.st_size, st.st_mtime_ns))
                yield rel
            else:  # another kind of file, a FIFO, a device: not an image
                listing.not_images.append(rel)


def _cache_key(listing: _Listing, in_chans: int, img_size: int) -> str:
    content = {
        "version": CACHE_VERSION,
        "in_chans": in_chans,
        "img_size": img_size,
        "classes": listing.classes,
        "splits": {s: [rel for rel, _ in files] for s, files in listing.files.items()},
        "stats": sorted(listing.stats),
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:32]


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------


def memory_budget() -> int:
    """Bytes of decoded images :func:`build` keeps in memory: ``$ZOO_IMAGEFOLDER_MEMORY``
    (e.g. ``512M``, ``8G`` or a number of bytes), else min(25% of RAM, 8 GiB)."""
    text = os.environ.get(MEMORY_ENV, "").strip()
    if text:
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
        number, unit = text.upper().rstrip("IB"), 1
        if number and number[-1] in units:
            number, unit = number[:-1], units[number[-1]]
        try:
            value = int(float(number) * unit)
        except ValueError:
            value = -1
        if value < 0:
            raise DataError(f"${MEMORY_ENV}={text!r} is not a size; write e.g. 512M or 8G.")
        return value
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return min(ram // 4, 8 << 30)


def build(
    root: str | Path,
    *,
    in_chans: int,
    img_size: int,
    valid_size: int | None = None,
    split_seed: int = 0,
    train_subset: int | None = None,
    test_subset: int | None = None,
    device: str | torch.device = "cpu",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    cache_dir: str | Path | None = None,
    budget: int | None = None,
    workers: int | None = None,
) -> DataBundle:
    """The image folder ``root`` as train/valid/test splits of uint8 (N, in_chans, img_size,
    img_size) images on ``device``.

    Without val/, ``valid_size`` images (default 10% of train/, at most 5000) are held out of
    train/ with a permutation seeded by ``split_seed``; without test/, the validation split is
    also the test split. ``mean``/``std`` replace the training split's own (a pretrained
    model's, when fine-tuning). ``cache_dir`` defaults to ``default_root()/imagefolder-cache``,
    ``budget`` to :func:`memory_budget`, ``workers`` (decoding threads, or DataLoader worker
    processes when streaming) to the CPU count, at most 8.
    """
    if in_chans not in (1, 3):
        raise DataError(
            f"imagefolder converts images to 1 (grayscale) or 3 (RGB) channels, not "
            f"in_chans={in_chans!r}; set model.args.in_chans to 1 or 3."
        )
    if isinstance(img_size, bool) or not isinstance(img_size, int) or not 1 <= img_size <= 4096:
        raise DataError(f"img_size must be an integer from 1 to 4096, got {img_size!r}.")
    root = Path(root).expanduser()
    listing = _list_folder(root)
    if listing.not_images:
        log.info(
            "%s: skipped %d file(s) that are not images (%s): %s",
            root,
            len(listing.not_images),
            " ".join(IMAGE_EXTENSIONS),
            _some(listing.not_images),
        )
    if valid_size is not None and "val" in listing.files:
        raise DataError(
            f"data.valid_size={valid_size} is set, but {root}/val is the validation split; "
            "remove data.valid_size (or the val/ folder)."
        )
    key = _cache_key(listing, in_chans, img_size)
    cache = Path(cache_dir) if cache_dir is not None else default_root() / CACHE_DIR
    workers = workers or min(8, os.cpu_count() or 1)
    total = sum(len(f) for f in listing.files.values())
    needed = total * in_chans * img_size * img_size
    limit = memory_budget() if budget is None else budget
    scan: Scan | None
    if needed > limit:
        log.info(
            "%s: %d images decode to %s, more than the memory budget of %s ($%s): streaming "
            "them from disk through %d DataLoader workers each epoch",
            root,
            total,
            _gib(needed),
            _gib(limit),
            MEMORY_ENV,
            workers,
        )
        pools, scan = _scan_for_streaming(
            listing, in_chans, img_size, cache / f"{key}-scan", workers
        )
    else:
        pools, scan = _decoded(listing, in_chans, img_size, cache / f"{key}.safetensors", workers)
    return _assemble(
        listing,
        pools,
        scan,
        in_chans=in_chans,
        img_size=img_size,
        valid_size=valid_size,
        split_seed=split_seed,
        train_subset=train_subset,
        test_subset=test_subset,
        device=device,
        mean=mean,
        std=std,
        workers=workers,
        stats_path=cache / f"{key}.stats.json",
    )


_Pair = tuple[torch.Tensor, torch.Tensor]
_Stats = tuple[tuple[float, ...], tuple[float, ...]]  # per-channel mean, std


def _assemble(
    listing: _Listing,
    pools: dict[str, _Pair],
    scan: Scan | None,
    *,
    in_chans: int,
    img_size: int,
    valid_size: int | None,
    split_seed: int,
    train_subset: int | None,
    test_subset: int | None,
    device: str | torch.device,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    workers: int,
    stats_path: Path,
) -> DataBundle:
    """Hold out, subset, compute mean/std and put the splits on ``device``. ``pools`` holds
    decoded images, or for a streamed folder (``scan`` given) indices into its file list.
    The training split's mean/std are cached in ``stats_path`` per hold-out."""
    root, notes = listing.root, []
    name = f"imagefolder {root}"
    if "val" in pools:
        train, _ = hold_out(pools["train"], 0, split_seed, name)  # permuted, for train_subset
        valid = pools["val"]
    else:
        n = len(pools["train"][1])
        if valid_size is None:
            valid_size = max(1, min(5000, n // 10))
        train, valid = hold_out(pools["train"], valid_size, split_seed, name)
        notes.append(
            f"no val/ folder: {valid_size} images of train/ held out for validation "
            f"(split_seed {split_seed})"
        )
    if "test" in pools:
        test, _ = hold_out(pools["test"], 0, split_seed, name)  # permuted, for test_subset
    else:
        test = valid
        where = "val/" if "val" in pools else "the validation images held out of train/"
        notes.append(f"no test/ folder: test metrics are measured on {where}")
    if mean is None or std is None:
        which = "val/" if "val" in pools else f"valid_size={valid_size},split_seed={split_seed}"
        if scan is not None:
            mean, std = scan.stats(train[0])  # sums of the scan: no pixels to count
        else:
            mean, std = _cached_stats(stats_path, which, in_chans, lambda: channel_stats(train[0]))
    elif len(mean) != in_chans or len(std) != in_chans:
        raise DataError(f"mean/std need {in_chans} values (one per channel), got {mean}/{std}.")
    train = take_first(train, train_subset, "train_subset", name)
    test = take_first(test, test_subset, "test_subset", name)
    if scan is not None:
        notes.append("streamed from disk: the folder is larger than the memory budget")
    for note in notes:
        log.info("%s: %s", root, note)

    def split(pair: _Pair) -> Split:
        if scan is None:
            return Split(pair[0].to(device).contiguous(), pair[1].to(device).contiguous())
        return scan.split(pair, device, workers)

    valid_split = split(valid)
    return DataBundle(
        name="imagefolder",
        train=split(train),
        valid=valid_split,
        test=valid_split if test is valid else split(test),  # one copy on the device
        num_classes=len(listing.classes),
        in_chans=in_chans,
        img_size=img_size,
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        classes=listing.classes,
        notes=tuple(notes),
    )


def _cached_stats(path: Path, which: str, in_chans: int, compute: Callable[[], _Stats]) -> _Stats:
    """The training split's mean/std from ``path`` (JSON: hold-out -> [mean, std]), else
    computed and added to it."""
    try:
        cached = json.loads(path.read_text())
        mean, std = cached[which]
        if len(mean) == len(std) == in_chans:
            return tuple(float(m) for m in mean), tuple(float(s) for s in std)
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        cached = {}
    mean, std = compute()
    try:
        atomic_write_json(
            path, {**(cached if isinstance(cached, dict) else {}), which: [mean, std]}
        )
    except OSError as e:  # a read-only cache must not stop training
        log.warning("could not cache mean/std in %s (%s)", path, e)
    return mean, std


def _some(items: Sequence[str], count: int = 5) -> str:
    return ", ".join(items[:count]) + (
        f" and {len(items) - count} more" if len(items) > count else ""
    )


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _bad_files(root: Path, bad: list[str], total: int) -> None:
    """Log the unreadable files, or refuse when there are too many of them (more than 10 and
    more than 1% of the images, or more than 100)."""
    if not bad:
        return
    allowed = min(100, max(10, total // 100))
    if len(bad) > allowed:
        raise DataError(
            f"{len(bad)} of {total} images under {root} cannot be read ({_some(bad, 3)}); more "
            f"than the {allowed} zoo skips: fix or remove them."
        )
    log.warning("%s: skipped %d unreadable image(s): %s", root, len(bad), _some(bad, 10))


# --------------------------------------------------------------------------------------------
# Decoding into memory, and the cache
# --------------------------------------------------------------------------------------------


def _all_files(listing: _Listing) -> list[tuple[str, str, int]]:
    return [(s, rel, label) for s, files in listing.files.items() for rel, label in files]


def _decoded(
    listing: _Listing, in_chans: int, img_size: int, path: Path, workers: int
) -> tuple[dict[str, _Pair], None]:
    """Split name -> (images, labels) of the readable images, from the cache or decoded."""
    pools = _read_cache(path, listing)
    if pools is not None:
        log.info("%s: read the decoded images from the cache %s", listing.root, path)
        return pools, None
    start = time.perf_counter()
    pools, bad, resized, total = {}, [], 0, 0
    for split, files in listing.files.items():
        base = os.path.join(listing.root, "")
        paths = [base + rel for rel, _ in files]
        images, ok, count, reasons = _decode_parallel(paths, in_chans, img_size, workers)
        labels = torch.tensor([label for _, label in files], dtype=torch.int64)
        if reasons:  # copies the split once; a clean folder is never copied
            images, labels = images[ok], labels[ok]
        pools[split] = (images, labels)
        bad += [f"{files[i][0]} ({why})" for i, why in sorted(reasons.items())]
        resized, total = resized + count, total + len(files)
    _bad_files(listing.root, bad, total)
    if resized:
        log.info(
            "%s: resized %d of %d images of other sizes to %dx%d",
            listing.root,
            resized,
            total,
            img_size,
            img_size,
        )
    log.info(
        "%s: decoded %d images in %.1f s (%d workers); caching them in %s",
        listing.root,
        total - len(bad),
        time.perf_counter() - start,
        workers,
        path,
    )
    _write_cache(path, pools, listing, bad)
    return pools, None


def _decode_parallel(
    paths: list[str], in_chans: int, img_size: int, workers: int
) -> tuple[torch.Tensor, torch.Tensor, int, dict[int, str]]:
    """(images, readable mask, number resized, index -> why unreadable), decoded in chunks of
    :data:`_CHUNK` rows. Unreadable rows are zeros.

    With ``workers`` >= 2 and enough images, the chunks go to forked worker processes: the
    decoder releases the GIL but reading files, checking PNGs (zoo.data.png) and calling the
    decoder do not, so threads contend for it. On 2 Xeon cores 2 processes decoded the 60,000
    Fashion-MNIST PNGs 2.9x as fast as 2 threads (benchmarks/imagefolder_pipeline.py). Where
    ``fork`` is unavailable, threads do the same work."""
    out = torch.empty((len(paths), in_chans, img_size, img_size), dtype=torch.uint8)
    ok = torch.ones(len(paths), dtype=torch.bool)
    starts = range(0, len(paths), _CHUNK)
    job = _DecodeJob(paths, in_chans, img_size)
    with quiet_decoder():
        if workers < 2 or len(starts) < 2:
            results = [job(start) for start in starts]
        elif len(starts) >= _MIN_CHUNKS_FOR_PROCESSES and _can_fork():
            results = _in_processes(job, starts, workers)
        else:
            with concurrent.futures.ThreadPoolExecutor(workers) as pool:
                results = list(pool.map(job, starts))
    resized, reasons = 0, {}
    for start, (images, count, why) in zip(starts, results, strict=True):
        out[start : start + len(images)] = images
        resized += count
        reasons.update(why)
    if reasons:
        ok[list(reasons)] = False
    return out, ok, resized, reasons


_MIN_CHUNKS_FOR_PROCESSES = 16  # small folders (< 4,096 images) decode in threads: no fork


@dataclass
class _DecodeJob:
    """Decode one chunk of ``paths``: (uint8 images, number resized, index -> why unreadable).
    A plain picklable callable, so threads and forked processes run the same code."""

    paths: list[str]
    in_chans: int
    img_size: int

    def __call__(self, start: int) -> tuple[torch.Tensor, int, dict[int, str]]:
        stop = min(start + _CHUNK, len(self.paths))
        images = torch.zeros((stop - start, self.in_chans, self.img_size, self.img_size),
                             dtype=torch.uint8)  # fmt: skip
        resized, reasons = 0, {}
        for row, i in enumerate(range(start, stop)):
            try:
                image, was_resized = read_image(self.paths[i], self.in_chans, self.img_size)
            except UnreadableImage as e:
                reasons[i] = str(e)
                continue
            images[row] = image
            resized += was_resized
        return images, resized, reasons


def _can_fork() -> bool:
    import multiprocessing

    return "fork" in multiprocessing.get_all_start_methods()


_job: _DecodeJob | None = None  # the job of a forked decoding process


def _fork_init(job: _DecodeJob) -> None:
    global _job
    _job = job
    torch.set_num_threads(1)  # one process per core already
    # Ctrl-C reaches the whole process group: only the parent handles it (and terminates
    # the pool), so no worker prints a traceback; the pool's SIGTERM ends a worker at once.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _fork_run(start: int) -> tuple[bytes, int, dict[int, str]]:
    assert _job is not None
    images, resized, reasons = _job(start)
    return images.numpy().tobytes(), resized, reasons  # bytes: no shared memory needed


def _in_processes(
    job: _DecodeJob, starts: range, workers: int
) -> list[tuple[torch.Tensor, int, dict[int, str]]]:
    """Run ``job`` over ``starts`` in ``workers`` forked processes (the job is inherited, not
    pickled); each chunk comes back as bytes through the pool's pipe. A worker that dies (an
    image that crashes the decoder) is a :class:`DataError` naming its chunk's files, not a
    hang; Ctrl-C cancels the chunks not started."""
    import multiprocessing
    from concurrent.futures.process import BrokenProcessPool

    context = multiprocessing.get_context("fork")
    shape = (job.in_chans, job.img_size, job.img_size)
    pool = concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=context, initializer=_fork_init, initargs=(job,)
    )
    results = []
    try:
        futures = [pool.submit(_fork_run, start) for start in starts]
        for start, future in zip(starts, futures, strict=True):
            try:
                raw, resized, reasons = future.result()
            except BrokenProcessPool:
                last = min(start + _CHUNK, len(job.paths)) - 1
                raise DataError(
                    f"a decoding process died while reading {job.paths[start]} ... "
                    f"{job.paths[last]}: one of these files crashes the image decoder; "
                    "move them out of the folder"
                ) from None
            images = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(-1, *shape)
            results.append((images, resized, reasons))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # running chunks are milliseconds
    return results


def _read_cache(path: Path, listing: _Listing) -> dict[str, _Pair] | None:
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            pools = {
                s: (f.get_tensor(f"{s}.images"), f.get_tensor(f"{s}.labels")) for s in listing.files
            }
    except (SafetensorError, OSError, ValueError, KeyError) as e:
        log.warning("ignoring the unreadable cache %s (%s); decoding again", path, e)
        return None
    if meta.get("version") != CACHE_VERSION or json.loads(meta.get("classes", "[]")) != list(
        listing.classes
    ):
        return None
    bad = json.loads(meta.get("unreadable", "[]"))
    if bad:
        log.warning(
            "%s: skipped %d unreadable image(s): %s", listing.root, len(bad), _some(bad, 10)
        )
    return pools


def _write_cache(path: Path, pools: dict[str, _Pair], listing: _Listing, bad: list[str]) -> None:

    from safetensors.torch import save_file

    tensors = {}
    for split, (images, labels) in pools.items():
        tensors[f"{split}.images"], tensors[f"{split}.labels"] = images, labels
    meta = {
        "version": CACHE_VERSION,
        "root": str(listing.root),
        "classes": json.dumps(list(listing.classes)),
        "unreadable": json.dumps(bad),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata=meta)
            os.replace(tmp, path)  # readers see the whole file or none
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as e:  # a read-only cache must not stop training
        log.warning("could not cache the decoded images in %s (%s)", path, e)


# --------------------------------------------------------------------------------------------
# Streaming a folder too large for memory
# --------------------------------------------------------------------------------------------


def _scan_for_streaming(
    listing: _Listing, in_chans: int, img_size: int, path: Path, workers: int
) -> tuple[dict[str, _Pair], Scan]:
    """Split name -> (indices into the scan's paths, labels) of the readable images."""
    files = _all_files(listing)
    names = [str(listing.root / rel) for _, rel, _ in files]
    scanned = _read_scan(path, len(files))
    if scanned is None:
        scanned = _scan(names, in_chans, img_size, workers, files, listing.root)
        _write_scan(path, *scanned)
    else:
        log.info("%s: read the scan of the folder from the cache %s", listing.root, path)
    ok, sums, squares, bad_text = scanned
    _bad_files(listing.root, bad_text, len(files))
    keep = ok.nonzero().squeeze(1)
    kept = [names[i] for i in keep.tolist()]
    position = {i: p for p, i in enumerate(keep.tolist())}
    labels = torch.tensor([label for _, _, label in files], dtype=torch.int64)
    pools = {}
    for split in listing.files:
        rows = [i for i in keep.tolist() if files[i][0] == split]
        pools[split] = (torch.tensor([position[i] for i in rows], dtype=torch.int64), labels[rows])
    scan = Scan(listing.root, kept, sums[keep], squares[keep], in_chans, img_size)
    return pools, scan


_Scanned = tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]  # ok, sums, squares, bad


def _read_scan(path: Path, count: int) -> _Scanned | None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        found = load_file(str(path.with_name(path.name + ".safetensors")))
        bad = json.loads(path.with_name(path.name + ".json").read_text())
    except (OSError, ValueError, SafetensorError, RecursionError):
        return None
    ok = found.get("ok")
    if ok is None or len(ok) != count or not isinstance(bad, list):
        return None
    return ok.bool(), found["sums"], found["squares"], [str(b) for b in bad]


def _scan(
    names: list[str],
    in_chans: int,
    img_size: int,
    workers: int,
    files: list[tuple[str, str, int]],
    root: Path,
) -> _Scanned:
    from torch.utils.data import DataLoader

    chunks = [list(range(i, min(i + _CHUNK, len(names)))) for i in range(0, len(names), _CHUNK)]
    loader: DataLoader[Any] = DataLoader(
        PixelSums(names, in_chans, img_size),
        batch_size=None,
        sampler=chunks,
        num_workers=min(workers, len(chunks)),
    )
    start = time.perf_counter()
    parts = list(loader)
    ok = torch.cat([p[0] for p in parts])
    sums = torch.cat([p[1] for p in parts])
    squares = torch.cat([p[2] for p in parts])
    resized = int(torch.cat([p[3] for p in parts]).sum())
    bad = [f"{files[i][1]} ({why})" for p in parts for i, why in sorted(p[4].items())]
    log.info(
        "%s: scanned %d images in %.1f s (%d resized to %dx%d)",
        root,
        len(names),
        time.perf_counter() - start,
        resized,
        img_size,
        img_size,
    )
    return ok, sums, squares, bad


def _write_scan(
    path: Path, ok: torch.Tensor, sums: torch.Tensor, squares: torch.Tensor, bad: list[str]
) -> None:
    from safetensors.torch import save

    try:
        atomic_write_text(path.with_name(path.name + ".json"), json.dumps(bad))
        tensors = {"ok": ok.to(torch.uint8), "sums": sums, "squares": squares}
        atomic_write_bytes(path.with_name(path.name + ".safetensors"), save(tensors))
    except OSError as e:
        log.warning("could not cache the scan of the folder in %s (%s)", path, e)
