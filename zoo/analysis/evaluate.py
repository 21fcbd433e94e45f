"""``zoo eval``: score trained weights on a dataset split, as timm's ``validate.py`` does.

    >>> result = evaluate_source("runs/quickstart/20260101-120000")
    >>> result.top1, result.top5, result.loss, result.n
    >>> write_outputs(result, "eval/")   # metrics.json, confusion_matrix.png, reliability.png

The source is anything :func:`zoo.create` loads with weights: a run or export directory,
``NAME.TAG`` or ``hf-hub:ORG/NAME[@REV]``. By default the split is the one the weights were
trained on: dataset, root, split seed, validation size, subsets and synthetic settings come
from the source's ``recipe.yaml`` (then ``summary.json``, then ``config.json``); the images
are normalised with the mean/std in ``config.json``, the values the weights were trained
with. The pass is :func:`zoo.data.metrics.score_split` over the in-memory uint8 split, the
trainer's own evaluation loop, so ``zoo eval RUN`` reproduces ``summary.json``'s
``test_acc`` and ``test_loss`` and runs at the trainer's evaluation speed.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

from zoo._fs import check_output_dir
from zoo.data.catalog import CIFAR10_CLASSES, DATASETS, FASHION_MNIST_CLASSES, GEOMETRY
from zoo.errors import (
    DataError,
    RunError,
    UnknownModelError,
    WeightsError,
    did_you_mean,
    printable,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from zoo.data.datasets import DataBundle
    from zoo.data.metrics import ClassScores

__all__ = [
    "CONFUSION_NAME",
    "DEFAULT_BATCH_SIZE",
    "METRICS_NAME",
    "OUTPUT_NAMES",
    "RELIABILITY_NAME",
    "SPLITS",
    "EvalOptions",
    "EvalResult",
    "check_out_dir",
    "confusion_figure",
    "evaluate_source",
    "reliability_figure",
    "write_outputs",
]

log = logging.getLogger(__name__)

SPLITS = ("test", "valid", "train")
DEFAULT_BATCH_SIZE = 256
METRICS_NAME = "metrics.json"
CONFUSION_NAME = "confusion_matrix.png"
RELIABILITY_NAME = "reliability.png"
OUTPUT_NAMES = (METRICS_NAME, CONFUSION_NAME, RELIABILITY_NAME)
_KNOWN_LABELS: dict[tuple[str, ...], str] = {
    CIFAR10_CLASSES: "cifar10",
    FASHION_MNIST_CLASSES: "fashion_mnist",
}
_SPLIT_KEYS = ("valid_size", "split_seed", "train_subset", "test_subset")


@dataclass(frozen=True)
class EvalOptions:
    """What ``zoo eval``'s flags say. None means: as the source was trained."""

    dataset: str | None = None
    root: str | Path | None = None
    split: str = "test"
    batch_size: int | None = None
    device: str | None = None  # None or "auto": the best available
    download: bool = True


@dataclass(frozen=True)
class EvalResult:
    source: str
    dataset: str
    split: str
    scores: ClassScores
    label_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    batch_size: int
    device: str
    precision: str
    seconds: float  # the scoring pass (data already in memory)
    notes: tuple[str, ...] = ()

    @property
    def n(self) -> int:
        return self.scores.n

    @property
    def top1(self) -> float:
        return self.scores.top1

    @property
    def top5(self) -> float:
        """Top-5 accuracy (top-k with k = the class count for fewer than 5 classes)."""
        return self.scores.topk_acc

    @property
    def loss(self) -> float:
        return self.scores.loss

    @property
    def ece(self) -> float:
        return self.scores.ece

    def per_class(self) -> list[dict[str, Any]]:
        return [
            {"index": i, "label": label, "n": n, "accuracy": _number(acc)}
            for i, (label, (n, acc)) in enumerate(
                zip(self.label_names, self.scores.per_class(), strict=True)
            )
        ]

    def to_dict(self) -> dict[str, Any]:
        """The result as JSON-ready data (fractions; NaN written as null)."""
        s = self.scores
        return {
            "source": self.source,
            "dataset": self.dataset,
            "split": self.split,
            "n": s.n,
            "top1": _number(s.top1),
            "top5": _number(s.topk_acc),
            "topk": s.topk,
            "loss": _number(s.loss),
            "ece": _number(s.ece),
            "per_class": self.per_class(),
            "confusion": s.confusion,
            "calibration": [
                {
                    "lower": b.lower,
                    "upper": b.upper,
                    "n": b.count,
                    "confidence": _number(b.confidence),
                    "accuracy": _number(b.accuracy),
                }
                for b in s.calibration
            ],
            "label_names": list(self.label_names),
            "mean": list(self.mean),
            "std": list(self.std),
            "batch_size": self.batch_size,
            "device": self.device,
            "precision": self.precision,
            "seconds": self.seconds,
            "images_per_s": s.n / self.seconds if self.seconds > 0 else None,
            "notes": list(self.notes),
        }

    def table(self) -> str:
        """The result as the text ``zoo eval`` prints."""
        s = self.scores
        speed = f"{s.n / self.seconds:,.0f} images/s" if self.seconds > 0 else "-"
        labels = [printable(name) for name in self.label_names]  # names from folders, files
        width = max([len("per class"), *map(len, labels)])
        lines = [
            f"{printable(self.source)}: {self.dataset} {self.split}, {s.n:,} images "
            f"(batch {self.batch_size}, {self.device}, {self.precision})",
            f"  top1   {s.top1:.4f}",
            f"  top{s.topk}   {s.topk_acc:.4f}",
            f"  loss   {s.loss:.4f}",
            f"  ECE    {s.ece:.4f} ({len(s.calibration)} bins)",
            f"  speed  {speed}",
            "",
            f"  {'per class'.ljust(width)}  accuracy  images",
        ]
        for label, row in zip(labels, self.per_class(), strict=True):
            acc = "-" if row["accuracy"] is None else f"{row['accuracy']:.4f}"
            lines.append(f"  {label.ljust(width)}  {acc:>8}  {row['n']:>6}")
        return "\n".join(lines)


def _number(value: float) -> float | None:
    return None if math.isnan(value) else value


# -- the evaluation ------------------------------------------------------------------------


def evaluate_source(source: str, options: EvalOptions = EvalOptions()) -> EvalResult:
    """Load ``source``'s weights, build the dataset split and score them in one pass."""
    import torch

    from zoo.data.metrics import ClassTally, score_split
    from zoo.devices import autocast, select_device
    from zoo.runs import files as runfiles
    from zoo.runs.lock import check_unlocked
    from zoo.weights import factory
    from zoo.weights import files as weight_files

    _check_options(options)
    directory = _model_dir(source)
    check_unlocked(directory, "evaluate")  # a run in its first epoch has no config.json yet
    config = weight_files.read_config(directory)
    recipe = runfiles.read_recipe_data(directory) or {}
    summary = runfiles.read_json(directory / runfiles.SUMMARY_NAME, missing_ok=True) or {}
    data_spec = recipe.get("data") if isinstance(recipe.get("data"), dict) else {}
    assert isinstance(data_spec, dict)
    dataset, trained, build_args = _dataset_settings(source, options, data_spec, summary, config)
    if dataset in GEOMETRY:  # refuse a mismatch before loading anything
        _, chans, size = GEOMETRY[dataset]
        _check_geometry(source, config, dataset, [chans, size, size])
    device = select_device(options.device)
    model = factory.create_from_source(str(directory)).eval().to(device)
    precision = runfiles.trained_precision(recipe, summary)
    channels_last = recipe.get("channels_last") is True
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    batch_size = _batch_size(options, data_spec)
    bundle = _build_data(source, dataset, build_args, config, device, options.download)
    split = getattr(bundle, options.split)
    if len(split) == 0:
        raise DataError(
            f"the {options.split} split of {dataset} has 0 images here (valid_size="
            f"{build_args.get('valid_size')!r}); choose --split test or train"
        )
    notes = list(bundle.notes)
    _check_geometry(source, config, dataset, [bundle.in_chans, bundle.img_size, bundle.img_size])
    num_classes = _num_classes(source, config, model, bundle)
    mean, std = _normalisation(source, config, bundle, notes)
    device_type = device.split(":")[0]
    tally = ClassTally.for_classes(num_classes, device)
    start = time.perf_counter()
    score_split(
        model,
        split,
        tally,
        mean=mean,
        std=std,
        batch_size=batch_size,
        channels_last=channels_last,
        autocast=lambda: autocast(device_type, precision, training=False),
    )
    scores = tally.scores()  # copies to the CPU: the device has finished
    seconds = time.perf_counter() - start
    for note in notes:
        log.info("%s", note)
    return EvalResult(
        source=source,
        dataset=dataset,
        split=options.split,
        scores=scores,
        label_names=_label_names(config if dataset == trained else {}, bundle, num_classes),
        mean=tuple(mean),
        std=tuple(std),
        batch_size=batch_size,
        device=device,
        precision=precision,
        seconds=seconds,
        notes=tuple(notes),
    )


def _check_options(options: EvalOptions) -> None:
    if options.dataset is not None and options.dataset not in DATASETS:
        raise DataError(
            f"unknown dataset {options.dataset!r}; choose one of {', '.join(DATASETS)}."
            + did_you_mean(options.dataset, DATASETS)
        )
    if options.split not in SPLITS:
        raise DataError(f"unknown split {options.split!r}; choose one of {', '.join(SPLITS)}")
    size = options.batch_size
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise DataError(f"batch size must be an integer >= 1, got {size!r}")


def _model_dir(source: str) -> Path:
    """The directory holding ``source``'s config.json and weights (a Hub snapshot for
    ``hf-hub:``, the store's copy or pointer target for ``NAME.TAG``)."""
    from zoo.models import registry
    from zoo.runs import files as runfiles
    from zoo.weights import hub, store

    if source.startswith(hub.HUB_PREFIX):
        wanted = [*hub.MODEL_FILES, runfiles.RECIPE_NAME, runfiles.SUMMARY_NAME]
        return hub.pull(source, allow_patterns=wanted)
    if Path(source).is_dir() and not registry.is_registered(source):
        return Path(source)
    base, tag = registry.split_tag(source)
    try:
        entry = registry.get_entry(base)
    except UnknownModelError:
        raise WeightsError(
            f"{source!r} is not a run or export directory, a NAME.TAG or hf-hub:ORG/NAME; "
            "pass the directory of a trained run, or see `zoo models --pretrained`"
        ) from None
    if tag is None and not store.tags_for(entry.name):
        raise WeightsError(
            f"{entry.name} has no trained weights to evaluate; pass a run or export "
            "directory, NAME.TAG (see `zoo models --pretrained`) or hf-hub:ORG/NAME"
        )
    return _model_dir(store.tag_source(entry.name, store.resolve_tag(entry.name, tag)))


def _dataset_settings(
    source: str,
    options: EvalOptions,
    data_spec: Mapping[str, Any],
    summary: Mapping[str, Any],
    config: Mapping[str, Any],
) -> tuple[str, str | None, dict[str, Any]]:
    """The dataset to score on, the one the weights were trained on (None: unknown) and the
    arguments of :func:`zoo.data.datasets.build`: those of the recipe when the two are the
    same, so that the valid and train splits (and a test subset) are the trainer's."""
    found = config.get("label_names")
    labels: tuple[str, ...] = ()
    if isinstance(found, list) and all(isinstance(name, str) for name in found):
        labels = tuple(found)
    trained = (
        data_spec.get("dataset")
        or summary.get("dataset")
        or config.get("dataset")
        or _KNOWN_LABELS.get(labels)  # e.g. a Hub repo's config.json alone
    )
    dataset = options.dataset or trained
    if not isinstance(dataset, str) or dataset not in DATASETS:
        what = (
            f"was trained on {dataset!r}, which zoo does not know"
            if dataset
            else "does not say which dataset it was trained on"
        )
        raise DataError(f"{source} {what}; pass --dataset, one of {', '.join(DATASETS)}")
    args: dict[str, Any] = {"root": options.root}
    if dataset == trained:
        for key in _SPLIT_KEYS:
            value = data_spec.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise RunError(
                    f"{source}: recipe.yaml data.{key} must be an integer, not {value!r}"
                )
            if value is not None:
                args[key] = value
        synthetic = data_spec.get("synthetic")
        if synthetic is not None and not isinstance(synthetic, dict):
            raise RunError(f"{source}: recipe.yaml data.synthetic must be a mapping")
        args["synthetic"] = synthetic
        if options.root is None:
            args["root"] = data_spec.get("root")
    return dataset, trained if isinstance(trained, str) else None, args


def _build_data(
    source: str,
    dataset: str,
    args: dict[str, Any],
    config: Mapping[str, Any],
    device: str,
    download: bool,
) -> DataBundle:
    from zoo.data import datasets

    if dataset != "imagefolder":
        return datasets.build(dataset, device=device, download=download, **args)
    from zoo.data import imagefolder

    size = config.get("input_size")
    if not args.get("root"):
        raise DataError(
            "dataset imagefolder needs --root FOLDER (train/ [val/] [test/] class folders)"
        )
    if not (isinstance(size, list) and len(size) == 3 and all(isinstance(v, int) for v in size)):
        raise DataError(
            f"{source} has no input_size [C, H, W] in its config.json, so the image size to "
            "decode the folder to is unknown; re-export the model"
        )
    split_args = {k: v for k, v in args.items() if k not in ("root", "synthetic")}
    return imagefolder.build(
        args["root"], in_chans=size[0], img_size=size[1], device=device, **split_args
    )


def _batch_size(options: EvalOptions, data_spec: Mapping[str, Any]) -> int:
    if options.batch_size is not None:
        return options.batch_size
    for key in ("eval_batch_size", "batch_size"):  # as the trainer evaluates
        value = data_spec.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
    return DEFAULT_BATCH_SIZE


def _num_classes(source: str, config: Mapping[str, Any], model: Any, bundle: DataBundle) -> int:
    found = config.get("num_classes")
    if not isinstance(found, int) or isinstance(found, bool):
        found = getattr(model, "num_classes", None)
    if not isinstance(found, int) or isinstance(found, bool) or found < 1:
        return bundle.num_classes
    if found < bundle.num_classes:
        raise DataError(
            f"{source} predicts {found} classes but {bundle.name} has {bundle.num_classes}; "
            "evaluate it on the dataset it was trained on (leave out --dataset)"
        )
    return found


def _check_geometry(
    source: str, config: Mapping[str, Any], dataset: str, have: Sequence[int]
) -> None:
    size = config.get("input_size")
    if isinstance(size, list) and len(size) == 3 and list(size) != list(have):
        raise DataError(
            f"{source} takes {'x'.join(map(str, size))} images but {dataset} has "
            f"{'x'.join(map(str, have))}; evaluate it on the dataset it was trained on "
            "(leave out --dataset)"
        )


def _normalisation(
    source: str, config: Mapping[str, Any], bundle: DataBundle, notes: list[str]
) -> tuple[Sequence[float], Sequence[float]]:
    """The mean/std the weights were trained with (config.json); for an export without
    them, the dataset's own training-split statistics, with a note saying so."""
    cfg = config.get("pretrained_cfg")
    fallback = cfg if isinstance(cfg, dict) else {}
    mean = config.get("mean") or fallback.get("mean")
    std = config.get("std") or fallback.get("std")
    if _channel_values(mean, bundle.in_chans) and _channel_values(std, bundle.in_chans, 1e-12):
        return [float(v) for v in mean], [float(v) for v in std]
    notes.append(
        f"{source} has no mean/std for {bundle.in_chans} channel(s) in its config.json (an "
        f"older export?); normalising with {bundle.name}'s training-split statistics"
    )
    return bundle.mean, bundle.std


def _channel_values(
    values: Any, channels: int, minimum: float = -math.inf
) -> TypeGuard[list[float]]:
    return (
        isinstance(values, list)
        and len(values) == channels
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        and all(math.isfinite(v) and v >= minimum for v in values)
    )


def _label_names(
    config: Mapping[str, Any], bundle: DataBundle, num_classes: int
) -> tuple[str, ...]:
    names = config.get("label_names")
    if isinstance(names, list) and len(names) == num_classes:
        return tuple(str(n) for n in names)
    if len(bundle.classes) == num_classes:
        return bundle.classes
    return tuple(str(i) for i in range(num_classes))


# -- outputs -------------------------------------------------------------------------------


def check_out_dir(out_dir: str | Path, *, force: bool = False) -> None:
    """Refuse an ``out_dir`` that is a file, or that holds more than an earlier evaluation's
    files unless ``force``; :func:`write_outputs` checks again, ``zoo eval`` before scoring."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} is a file; choose a directory")
    check_output_dir(out, OUTPUT_NAMES, force=force, what="the evaluation's files", error=RunError)


def write_outputs(result: EvalResult, out_dir: str | Path, *, force: bool = False) -> list[Path]:
    """Write ``confusion_matrix.png``, ``reliability.png`` and ``metrics.json`` (last) into
    ``out_dir`` (created if needed), each atomically: no file is ever half-written. An
    ``out_dir`` holding other files is refused unless ``force``."""
    from zoo._io import atomic_write_json
    from zoo.runs.plots import save_figure

    out = Path(out_dir)
    check_out_dir(out, force=force)
    figures = {
        CONFUSION_NAME: confusion_figure(result),
        RELIABILITY_NAME: reliability_figure(result),
    }
    out.mkdir(parents=True, exist_ok=True)
    written = [save_figure(fig, out / name) for name, fig in figures.items()]
    atomic_write_json(out / METRICS_NAME, result.to_dict())
    return [*written, out / METRICS_NAME]


def confusion_figure(result: EvalResult) -> Figure:
    """The confusion matrix, each row as fractions of its true class (counts written in the
    cells up to 30 classes), class names on both axes."""
    from zoo.runs.plots import new_figure

    counts = result.scores.confusion
    k = len(counts)
    rows = [[v / max(sum(row), 1) for v in row] for row in counts]
    side = min(4 + 0.45 * k, 40)
    fig = new_figure(figsize=(side + 1.5, side))
    ax = fig.subplots()
    image = ax.imshow(rows, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="fraction of the true class")
    ticks = list(range(k))
    ax.set_xticks(ticks, list(result.label_names), rotation=45, ha="right")
    ax.set_yticks(ticks, list(result.label_names))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"{result.dataset} {result.split}: top-1 {result.top1:.2%} of {result.n:,} images")
    if k <= 30:
        for i, row in enumerate(counts):
            for j, value in enumerate(row):
                if value:
                    dark = rows[i][j] > 0.5
                    ax.text(j, i, str(value), ha="center", va="center", fontsize=7,
                            color="white" if dark else "black")  # fmt: skip
    return fig


def reliability_figure(result: EvalResult) -> Figure:
    """Reliability diagram: accuracy against top-1 confidence per bin, the gap to the
    diagonal shaded, the expected calibration error in the title; image counts below."""
    from zoo.runs.plots import new_figure

    bins = result.scores.calibration
    width = 1.0 / max(len(bins), 1)
    fig = new_figure(figsize=(5.5, 6.5))
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    lowers = [b.lower for b in bins]
    filled = [b for b in bins if b.count]
    top.bar(
        [b.lower for b in filled],
        [b.accuracy for b in filled],
        width=width,
        align="edge",
        edgecolor="black",
        label="accuracy",
    )
    top.bar(
        [b.lower for b in filled],
        [b.confidence - b.accuracy for b in filled],
        bottom=[b.accuracy for b in filled],
        width=width,
        align="edge",
        color="tab:red",
        alpha=0.3,
        hatch="//",
        label="gap to confidence",
    )
    top.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.legend(loc="upper left")
    top.set_title(f"{result.dataset} {result.split}: ECE {result.ece:.2%} ({len(bins)} bins)")
    bottom.bar(lowers, [b.count for b in bins], width=width, align="edge", color="gray")
    bottom.set_xlabel("top-1 confidence")
    bottom.set_ylabel("images")
    return fig
