"""``zoo predict``: class predictions for image files, with the preprocessing of the weights.

    >>> result = predict("runs/quickstart/20260101-120000", ["shoe.png", "photos/"])
    >>> result.predictions[0].top[0]      # TopClass(label='Sneaker', index=7, prob=0.93)
    >>> format_result(result, "json")     # [{"path": ..., "top": [{"label", "index", "prob"}]}]

The source is anything :func:`zoo.create` loads: a run or export directory, ``NAME.TAG``,
``hf-hub:ORG/NAME[@REV]``, or a model already built. Paths are image files, folders (searched
recursively for :data:`~zoo.data.images.IMAGE_EXTENSIONS`; symlinked folders are not entered,
so a link cycle cannot loop) and glob patterns.

Speed: DataLoader workers decode whole batches with torchvision.io and resize/crop them
(:meth:`~zoo.data.transforms.ImageTransform.pixels`) and hand over uint8 pixels; the main
process normalises each batch at once with the trainer's own operation and runs the model.
A file that cannot be decoded is reported through ``on_skip`` and listed in
:attr:`PredictResult.skipped`; the others are predicted.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo.data.images import IMAGE_EXTENSIONS, UnreadableImage
from zoo.errors import DataError, printable

if TYPE_CHECKING:
    import torch
    from torch import nn

    from zoo.data.transforms import ImageTransform

__all__ = [
    "DEFAULT_TOPK",
    "FORMATS",
    "PredictOptions",
    "PredictResult",
    "Prediction",
    "Skipped",
    "TopClass",
    "find_images",
    "format_result",
    "iter_logits",
    "predict",
]

FORMATS = ("table", "json", "csv")
DEFAULT_TOPK = 5  # or the number of classes, when there are fewer
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class PredictOptions:
    """What ``zoo predict``'s flags say."""

    topk: int | None = None  # None: DEFAULT_TOPK, or all classes when there are fewer
    batch_size: int = 64
    device: str | None = "auto"  # auto: cuda, then mps, then cpu
    num_workers: int | None = None  # None: up to 4, leaving one CPU to the model
    threads: int | None = None  # torch threads of the model on CPU; None: the CPUs left over
    progress: bool = False  # a tqdm bar on stderr


@dataclass(frozen=True)
class TopClass:
    label: str  # the class name, or str(index) when the weights know none
    index: int
    prob: float


@dataclass(frozen=True)
class Prediction:
    path: str
    top: tuple[TopClass, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "top": [vars(t) for t in self.top]}


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


@dataclass
class PredictResult:
    source: str
    predictions: list[Prediction] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def predict(
    source: str | nn.Module,
    paths: Sequence[str | os.PathLike[str]],
    options: PredictOptions = PredictOptions(),
    on_skip: Callable[[Skipped], None] | None = None,
) -> PredictResult:
    """Top-k classes of every image under ``paths`` for the model at ``source``.

    Files that cannot be read go to ``on_skip`` (as they are found) and to
    :attr:`PredictResult.skipped`. Raises :class:`DataError` when ``paths`` hold no image
    file at all or ``options.topk`` exceeds the number of classes, before predicting any.
    """
    import torch

    from zoo.data.transforms import create_transform
    from zoo.devices import select_device
    from zoo.weights.factory import create

    _check_options(options)
    files, skipped = find_images(paths)
    for item in skipped:
        if on_skip is not None:
            on_skip(item)
    if not files and not skipped:
        shown = ", ".join(str(p) for p in paths[:3]) + (" ..." if len(paths) > 3 else "")
        raise DataError(
            f"no image files in {shown}; give image files, folders holding "
            f"{'/'.join(e.lstrip('.') for e in IMAGE_EXTENSIONS)} files, or glob patterns"
        )
    model = create(source) if isinstance(source, str) else source
    name = source if isinstance(source, str) else type(source).__name__
    transform = create_transform(model)
    labels = _label_names(model)
    num_classes = _num_classes(model, labels)
    topk = _topk(options.topk, num_classes, name)
    device = select_device(options.device)
    model = model.to(device).eval()
    result = PredictResult(source=name, skipped=list(skipped))

    def skip(item: Skipped) -> None:
        result.skipped.append(item)
        if on_skip is not None:
            on_skip(item)

    stream = iter_logits(
        model,
        files,
        transform,
        batch_size=options.batch_size,
        num_workers=options.num_workers,
        threads=options.threads,
        device=device,
        on_skip=skip,
        progress=options.progress,
    )
    for batch_files, logits in stream:
        if num_classes is not None and logits.shape[1] != num_classes:
            raise DataError(
                f"{name} gives {logits.shape[1]} scores per image but its config says "
                f"{num_classes} classes; re-export the model"
            )
        probs, indices = torch.softmax(logits.float(), dim=1).topk(topk, dim=1)
        for path, p_row, i_row in zip(batch_files, probs.tolist(), indices.tolist(), strict=True):
            top = tuple(
                TopClass(label=labels[i] if labels else str(i), index=i, prob=p)
                for p, i in zip(p_row, i_row, strict=True)
            )
            result.predictions.append(Prediction(path=str(path), top=top))
    return result


def _check_options(options: PredictOptions) -> None:
    for key, value, minimum in (
        ("batch_size", options.batch_size, 1),
        ("num_workers", options.num_workers, 0),
        ("threads", options.threads, 1),
        ("topk", options.topk, 1),
    ):
        if value is None and key != "batch_size":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise DataError(f"{key} must be an integer >= {minimum}, got {value!r}")


def _label_names(model: nn.Module) -> tuple[str, ...] | None:
    names = (getattr(model, "pretrained_cfg", None) or {}).get("label_names")
    return tuple(str(n) for n in names) if names else None


def _num_classes(model: nn.Module, labels: tuple[str, ...] | None) -> int | None:
    for value in (
        getattr(model, "num_classes", None),
        (getattr(model, "pretrained_cfg", None) or {}).get("num_classes"),
    ):
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return len(labels) if labels else None


def _topk(asked: int | None, num_classes: int | None, name: str) -> int:
    if asked is None:
        return min(DEFAULT_TOPK, num_classes) if num_classes else 1
    if num_classes is not None and asked > num_classes:
        raise DataError(
            f"--topk {asked} is more than the {num_classes} classes of {name}; "
            f"choose --topk {num_classes} or less"
        )
    return asked


# -- finding the images ---------------------------------------------------------------------


def find_images(paths: Sequence[str | os.PathLike[str]]) -> tuple[list[Path], list[Skipped]]:
    """(image files, paths skipped) for files, folders and glob patterns, in the order given
    (a folder's files sorted), each file once. A file named explicitly is kept whatever its
    extension (the decoder judges it); in folders only image extensions count. A path that
    does not exist, or a pattern that matches nothing, is skipped."""
    files: list[Path] = []
    skipped: list[Skipped] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        key = Path(os.path.abspath(path))
        if key not in seen:
            seen.add(key)
            files.append(path)

    for given in paths:
        text = os.fspath(given)
        if os.path.lexists(text):
            matches = [text]
        elif _GLOB_CHARS & set(text):
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                skipped.append(Skipped(text, "the pattern matches no file"))
        else:
            skipped.append(Skipped(text, "no such file or directory"))
            continue
        for match in matches:
            path = Path(match)
            if path.is_dir():
                for found in _walk(path):
                    add(found)
            elif os.path.lexists(match) and (match == text or _is_image_name(path)):
                add(path)
    return files, skipped


def _walk(folder: Path) -> list[Path]:
    """Image files under ``folder``, sorted by path; hidden entries are skipped and symlinked
    folders are not entered (os.walk does not follow links, so a link cycle cannot loop)."""
    found = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [
            Path(root, name)
            for name in names
            if not name.startswith(".") and _is_image_name(Path(name))
        ]
    return sorted(found, key=lambda path: path.parts)


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


# -- decoding in workers, predicting in the main process -----------------------------------


class _ImageBatches:
    """A map-style dataset whose items are whole batches: ``dataset[[i, j, ...]]`` decodes
    those files into one uint8 tensor, so a worker hands over one tensor per batch."""

    def __init__(self, files: Sequence[Path], transform: ImageTransform) -> None:
        self.files = list(files)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, indices: list[int]) -> tuple[list[int], torch.Tensor, list[Skipped]]:
        import torch

        kept, pixels, skipped = [], [], []
        for i in indices:
            try:
                pixels.append(self.transform.pixels(self.files[i]))
                kept.append(i)
            except UnreadableImage as e:
                skipped.append(Skipped(str(self.files[i]), str(e)))
            except Exception as e:  # a decoder failing some other way: skip the file, not all
                last = (str(e).strip().splitlines() or [""])[-1]
                why = f"cannot be decoded ({type(e).__name__}: {last})"
                skipped.append(Skipped(str(self.files[i]), why))
        c, h, w = self.transform.input_size
        batch = torch.stack(pixels) if pixels else torch.empty((0, c, h, w), dtype=torch.uint8)
        return kept, batch, skipped


def iter_logits(
    model: nn.Module,
    files: Sequence[Path],
    transform: ImageTransform,
    *,
    batch_size: int = 64,
    num_workers: int | None = None,
    threads: int | None = None,
    device: str = "cpu",
    on_skip: Callable[[Skipped], None] | None = None,
    progress: bool = False,
) -> Iterator[tuple[list[Path], torch.Tensor]]:
    """(files, logits) per batch of ``files``, in order; ``model`` is in eval mode on
    ``device``. Unreadable files go to ``on_skip``. Each batch is decoded in a worker and
    normalised here with the trainer's operation.

    On CPU the model runs with ``threads`` torch threads (default: the CPUs the workers
    leave, at least 1) while the loop runs: more would compete with the workers for the same
    cores, which slows both (an MLP batch took 6x longer with 2 threads than with 1 next to
    2 busy workers on 2 cores)."""
    import torch
    from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

    workers = _workers(num_workers, len(files), batch_size)
    loader: DataLoader[Any] = DataLoader(
        _ImageBatches(files, transform),  # type: ignore[arg-type]
        sampler=BatchSampler(SequentialSampler(range(len(files))), batch_size, drop_last=False),
        batch_size=None,  # the dataset makes the batches
        num_workers=workers,
        pin_memory=device.startswith("cuda"),
    )
    bar = _progress_bar(len(files)) if progress else None
    saved_threads = torch.get_num_threads()
    if not device.startswith(("cuda", "mps")):
        torch.set_num_threads(threads or max(1, _cpus() - workers))
    try:
        with torch.no_grad():
            for kept, pixels, skipped in _guarded(loader, workers):
                for item in skipped:
                    if on_skip is not None:
                        on_skip(item)
                if bar is not None:
                    bar.update(len(kept) + len(skipped))
                if not kept:
                    continue
                x = transform.normalise(pixels.to(device, non_blocking=True))
                yield [files[i] for i in kept], model(x)
    finally:
        torch.set_num_threads(saved_threads)
        if bar is not None:
            bar.close()


def _workers(asked: int | None, n_files: int, batch_size: int) -> int:
    if asked is not None:
        return asked
    if n_files <= batch_size:
        return 0  # one batch: starting a worker costs more than it saves
    return max(1, min(4, _cpus() - 1, -(-n_files // batch_size)))


def _cpus() -> int:
    """The CPUs this process may run on (its affinity, where the OS says)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _guarded(loader: Any, workers: int) -> Iterator[Any]:
    """The loader's batches; a worker that dies (a decoder crashing on a hostile file)
    becomes one line naming what to do."""
    try:
        yield from loader
    except RuntimeError as e:
        if workers and "DataLoader worker" in str(e):
            raise DataError(
                f"a worker decoding images died ({str(e).splitlines()[0]}); an image file "
                "may crash the decoder: find it with --num-workers 0 and --batch-size 1"
            ) from None
        raise


def _progress_bar(total: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc="predict", leave=False)


# -- output ---------------------------------------------------------------------------------


def format_result(result: PredictResult, fmt: str) -> str:
    """``table`` (one line per image), ``json`` (a list of {"path", "top": [{"label",
    "index", "prob"}]}) or ``csv`` (path, rank, label, index, prob: one row per class)."""
    if fmt == "json":
        return json.dumps([p.to_dict() for p in result.predictions], indent=2) + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["path", "rank", "label", "index", "prob"])
        for p in result.predictions:
            for rank, t in enumerate(p.top, 1):
                writer.writerow([p.path, rank, t.label, t.index, f"{t.prob:.6f}"])
        return out.getvalue()
    if fmt == "table":  # for a terminal: names from files and folders printed escaped
        paths = [printable(p.path) for p in result.predictions]
        width = max(map(len, paths), default=4)
        lines = [f"{'path':<{width}}  top classes (probability)"]
        for path, p in zip(paths, result.predictions, strict=True):
            classes = ", ".join(f"{printable(t.label)} {t.prob:.3f}" for t in p.top)
            lines.append(f"{path:<{width}}  {classes}")
        return "\n".join(lines) + "\n"
    raise DataError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
