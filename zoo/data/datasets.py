"""Datasets as in-memory uint8 tensors, their splits, and the batches a training loop reads.

``build(name)`` loads a dataset once into three :class:`Split` objects, each ONE uint8 tensor
(N, C, H, W) on the training device. ``batches(split, ...)`` then yields normalised float32
batches, augmented a whole batch at a time by :mod:`zoo.data.augment`, so the training loop never
runs Python or PIL code per image.

Normalisation constants (``DataBundle.mean`` / ``std``) are computed exactly (from a per-channel
histogram) on the training split after the validation images are held out and before any
``train_subset`` is taken, so they never see validation or test images and do not change with
the subset size. For CIFAR-10 they land within 0.001 of the well-known
(0.4914, 0.4822, 0.4465) / (0.2470, 0.2435, 0.2616).
"""

from __future__ import annotations

import codecs
import gzip
import importlib
import logging
import math
import os
import pickle
import struct
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from zoo.data.augment import AugmentConfig, apply_augment
from zoo.data.catalog import (
    DATASETS,
    DEBIAN_FASHION_MNIST,
    DEFAULT_VALID_SIZE,
    FASHION_MNIST_CLASSES,
    MAX_SYNTHETIC_BYTES,
    OFFICIAL_SIZES,
    SYNTHETIC_DEFAULTS,
)
from zoo.errors import DataError, did_you_mean

__all__ = [
    "CIFAR10_URL",
    "DataBundle",
    "Split",
    "batches",
    "build",
    "channel_stats",
    "default_root",
    "hold_out",
    "normalise",
    "num_batches",
    "read_idx",
    "take_first",
]

log = logging.getLogger(__name__)

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_FILES = (*CIFAR10_TRAIN_FILES, "test_batch", "batches.meta")
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True, eq=False)  # eq=False: comparing tensors elementwise is never meant
class Split:
    images: torch.Tensor  # uint8, (N, C, H, W), contiguous, on the requested device
    labels: torch.Tensor  # int64, (N,), same device

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def fetch(self, index_batches: Sequence[torch.Tensor]) -> Iterator[torch.Tensor]:
        """The uint8 images of each batch of indices (on the split's device), in order. A
        split streamed from disk (:mod:`zoo.data.imagefolder`) decodes them in DataLoader
        workers instead of indexing ``images``."""
        for idx in index_batches:
            yield self.images[idx]

    def part(self, start: int, stop: int) -> Split:
        """Images ``start:stop`` as a split of their own (a rank's share of an evaluation)."""
        return Split(self.images[start:stop], self.labels[start:stop])


@dataclass(frozen=True, eq=False)
class DataBundle:
    name: str
    train: Split
    valid: Split
    test: Split
    num_classes: int
    in_chans: int
    img_size: int
    mean: tuple[float, ...]  # per channel, in [0, 1] pixel units
    std: tuple[float, ...]
    classes: tuple[str, ...]
    # Lines the trainer logs and records in summary.json (e.g. "no test/ folder: ...").
    notes: tuple[str, ...] = ()


# --------------------------------------------------------------------------------------------
# Building a dataset
# --------------------------------------------------------------------------------------------


def default_root() -> Path:
    """$ZOO_DATA, else ``$XDG_CACHE_HOME/zoo/data`` (``~/.cache/zoo/data``)."""
    if os.environ.get("ZOO_DATA"):
        return Path(os.environ["ZOO_DATA"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "zoo" / "data"


def build(
    name: str,
    root: str | Path | None = None,
    *,
    valid_size: int | None = None,
    split_seed: int = 0,
    train_subset: int | None = None,
    test_subset: int | None = None,
    device: str | torch.device = "cpu",
    download: bool = True,
    synthetic: Mapping[str, Any] | None = None,
) -> DataBundle:
    """Load dataset ``name`` into train/valid/test splits on ``device``.

    ``valid_size`` images (default 5000; for ``synthetic`` its own ``valid_size``) are held out
    of the official training set with a permutation seeded by ``split_seed``; ``train_subset``
    keeps the first images of the remaining (permuted, hence random) training split and
    ``test_subset`` the first images of the test set. Raises :class:`DataError` for an unknown
    dataset, missing or corrupt files, and split sizes that do not fit.
    """
    if name == "imagefolder":
        raise DataError(
            "dataset 'imagefolder' is built by zoo.data.imagefolder.build(root, in_chans=..., "
            "img_size=...); call that instead."
        )
    if name not in DATASETS:
        raise DataError(
            f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}."
            + did_you_mean(name, DATASETS)
        )
    for key, value in (
        ("valid_size", valid_size),
        ("train_subset", train_subset),
        ("test_subset", test_subset),
    ):
        _check_count(key, value, minimum=1 if key != "valid_size" else 0)
    if root is not None and "\0" in str(root):  # Path calls would answer False, not fail
        raise DataError(f"data.root {str(root)!r} holds a NUL byte; give a plain directory")
    resolved = Path(root).expanduser() if root is not None else default_root()
    if root is not None and name != "synthetic" and resolved.exists() and not resolved.is_dir():
        raise DataError(
            f"data.root {resolved} is not a directory; give the folder that holds (or is to "
            "hold) the dataset's files"
        )
    if name == "synthetic":
        params = _synthetic_params(synthetic, valid_size)
        pool, test, classes = _make_synthetic(params)
        valid_size = params["valid_size"]
    elif synthetic is not None:
        raise DataError(f"synthetic settings were given for dataset {name!r}; remove them.")
    elif name == "cifar10":
        pool, test, classes = _load_cifar10(resolved, download)
    else:
        pool, test, classes = _load_fashion_mnist(resolved, download)
    valid_size = DEFAULT_VALID_SIZE if valid_size is None else valid_size
    train, valid = hold_out(pool, valid_size, split_seed, name)
    mean, std = channel_stats(train[0])
    train = take_first(train, train_subset, "train_subset", name)
    test = take_first(test, test_subset, "test_subset", name)
    images = pool[0]
    return DataBundle(
        name=name,
        train=_to_split(train, device),
        valid=_to_split(valid, device),
        test=_to_split(test, device),
        num_classes=len(classes),
        in_chans=int(images.shape[1]),
        img_size=int(images.shape[2]),
        mean=mean,
        std=std,
        classes=classes,
    )


_Pair = tuple[torch.Tensor, torch.Tensor]  # (uint8 images (N, C, H, W), int64 labels (N,))


def _check_count(key: str, value: object, minimum: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DataError(f"{key} must be an integer >= {minimum}, got {value!r}.")


def hold_out(pool: _Pair, valid_size: int, seed: int, name: str) -> tuple[_Pair, _Pair]:
    """(train, valid): ``valid_size`` images of ``pool`` held out by a permutation seeded with
    ``seed``; the training images come in permuted order too."""
    images, labels = pool
    n = len(labels)
    if valid_size >= n:
        raise DataError(
            f"valid_size={valid_size} leaves no training images: {name} has {n} training "
            f"images; choose valid_size < {n}."
        )
    # A CPU generator makes the split the same on every device and every run.
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    valid_idx, train_idx = order[:valid_size], order[valid_size:]
    return (images[train_idx], labels[train_idx]), (images[valid_idx], labels[valid_idx])


def take_first(pair: _Pair, count: int | None, key: str, name: str) -> _Pair:
    if count is None:
        return pair
    if count > len(pair[1]):
        raise DataError(
            f"{key}={count} is larger than the {len(pair[1])} images available in {name}; "
            f"choose {key} <= {len(pair[1])} or leave it unset."
        )
    return pair[0][:count], pair[1][:count]


def _to_split(pair: _Pair, device: str | torch.device) -> Split:
    images, labels = pair
    return Split(
        images=images.to(device=device, dtype=torch.uint8).contiguous(),
        labels=labels.to(device=device, dtype=torch.int64).contiguous(),
    )


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std in [0, 1] units, from a 256-bin histogram (no float
    copy of the whole split)."""
    values = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(images.shape[1]):
        counts = torch.bincount(images[:, c].reshape(-1), minlength=256).to(torch.float64)
        total = counts.sum()
        mean = (counts * values).sum() / total
        var = (counts * (values - mean) ** 2).sum() / total
        means.append(float(mean))
        stds.append(max(float(var.sqrt()), 1e-6))  # a constant channel must not divide by 0
    return tuple(means), tuple(stds)


# --------------------------------------------------------------------------------------------
# CIFAR-10
# --------------------------------------------------------------------------------------------


def _load_cifar10(root: Path, download: bool) -> tuple[_Pair, _Pair, tuple[str, ...]]:
    base = root / CIFAR10_DIR
    missing = [f for f in CIFAR10_FILES if not (base / f).is_file()]
    if missing and download:
        _download_cifar10(root)
        missing = [f for f in CIFAR10_FILES if not (base / f).is_file()]
    if missing:
        raise DataError(
            f"CIFAR-10 files missing in {base}: {', '.join(missing)}. Download {CIFAR10_URL} "
            f"and extract it into {root} (it creates {CIFAR10_DIR}/), or pass download=True "
            "where the network is reachable, or point root / $ZOO_DATA at a copy."
        )
    # torchvision.datasets.CIFAR10 would also read these files, but it md5-checks every
    # batch (so it rejects any file but the published ones, including the small ones the
    # tests write) and uses plain pickle.load, which runs arbitrary code from a tampered file.
    # So torchvision only downloads; we read the same files through an unpickler that only
    # knows the few numpy/builtin constructors a CIFAR batch needs, and validate every field.
    train = [_read_cifar_batch(base / f) for f in CIFAR10_TRAIN_FILES]
    test = _read_cifar_batch(base / "test_batch")
    meta = _unpickle_cifar(base / "batches.meta")
    classes = tuple(str(c) for c in _field(meta, "label_names", base / "batches.meta"))
    if len(classes) != 10:
        raise _corrupt(base / "batches.meta", f"expected 10 label_names, found {len(classes)}")
    pool = (torch.cat([b[0] for b in train]), torch.cat([b[1] for b in train]))
    log.info("loaded CIFAR-10 from %s", base)
    return pool, test, classes


def _download_cifar10(root: Path) -> None:
    from torchvision.datasets import CIFAR10  # lazy: importing torchvision is slow

    log.info("downloading CIFAR-10 into %s", root)
    try:
        CIFAR10(str(root), train=True, download=True)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError
        raise DataError(
            f"could not download CIFAR-10 ({type(exc).__name__}: {exc}). Fetch {CIFAR10_URL} "
            f"by other means and extract it into {root} (it creates {CIFAR10_DIR}/)."
        ) from exc


def _allowed_global(module: str, name: str) -> Any:
    """The only globals a CIFAR batch pickle may name: numpy's array reconstruction (under
    numpy 1 and numpy 2 module names) and the bytes encoder Python 3 protocol-2 pickles use."""
    import numpy as np

    core = importlib.import_module("numpy._core" if hasattr(np, "_core") else "numpy.core")
    allowed = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }
    for prefix in ("numpy.core", "numpy._core"):
        allowed[(f"{prefix}.multiarray", "_reconstruct")] = core.multiarray._reconstruct
        allowed[(f"{prefix}.numeric", "_frombuffer")] = core.numeric._frombuffer
    if (module, name) not in allowed:
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR-10 batch")
    return allowed[(module, name)]


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        return _allowed_global(module, name)


_MAX_CIFAR_BATCH_BYTES = 64 << 20


def _unpickle_cifar(path: Path) -> dict[str, Any]:
    from zoo._fs import open_regular

    try:
        with open_regular(path, error=DataError) as f:  # never a FIFO or a link out
            size = os.fstat(f.fileno()).st_size
            if size > _MAX_CIFAR_BATCH_BYTES:  # a batch is 31 MB
                raise _corrupt(path, f"{size} bytes is more than a CIFAR-10 batch can be")
            # latin1: the published batches are Python 2 pickles (as torchvision reads them).
            obj = _CifarUnpickler(f, encoding="latin1").load()
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        KeyError,
        IndexError,
    ) as exc:
        raise _corrupt(path, f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(obj, dict):
        raise _corrupt(path, f"expected a pickled dict, found {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _field(batch: Mapping[str, Any], key: str, path: Path) -> Any:
    if key not in batch:
        raise _corrupt(path, f"no {key!r} entry (found {sorted(batch)})")
    return batch[key]


def _read_cifar_batch(path: Path) -> _Pair:
    import numpy as np

    batch = _unpickle_cifar(path)
    data = np.asarray(_field(batch, "data", path))
    labels = np.asarray(_field(batch, "labels", path))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise _corrupt(path, f"'data' should be uint8 (N, 3072), found {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],) or (
        labels.size and not 0 <= labels.min() <= labels.max() < 10
    ):
        raise _corrupt(path, f"'labels' should be {data.shape[0]} integers in [0, 10)")
    images = torch.from_numpy(data.copy()).reshape(-1, 3, 32, 32)  # rows are R, G, B planes
    return images, torch.from_numpy(labels.astype(np.int64))


def _corrupt(path: Path, why: str) -> DataError:
    return DataError(
        f"corrupt dataset file {path}: {why}. Delete {path.parent} and download it again "
        f"(CIFAR-10: {CIFAR10_URL}; Fashion-MNIST: torchvision or Debian's dataset-fashion-mnist)."
    )


# --------------------------------------------------------------------------------------------
# Fashion-MNIST
# --------------------------------------------------------------------------------------------


def _load_fashion_mnist(root: Path, download: bool) -> tuple[_Pair, _Pair, tuple[str, ...]]:
    torchvision_dir = root / "FashionMNIST" / "raw"
    files = _find_idx_files((torchvision_dir, DEBIAN_FASHION_MNIST))
    if files is None and download:
        _download_fashion_mnist(root)
        files = _find_idx_files((torchvision_dir,))
    if files is None:
        names = ", ".join(f"{n}.gz" for n in FASHION_MNIST_FILES.values())
        raise DataError(
            f"Fashion-MNIST files not found in {torchvision_dir} or {DEBIAN_FASHION_MNIST}. "
            f"Install Debian's package (apt-get install dataset-fashion-mnist), or put {names} "
            f"into {torchvision_dir}, or pass download=True where the network is reachable."
        )
    train = _idx_pair(files["train_images"], files["train_labels"])
    test = _idx_pair(files["test_images"], files["test_labels"])
    log.info("loaded Fashion-MNIST from %s", files["train_images"].parent)
    return train, test, FASHION_MNIST_CLASSES


def _find_idx_files(directories: Sequence[Path]) -> dict[str, Path] | None:
    """The four IDX files from the first directory holding all of them (plain or .gz)."""
    for directory in directories:
        found = {}
        for key, stem in FASHION_MNIST_FILES.items():
            for candidate in (directory / stem, directory / f"{stem}.gz"):
                if candidate.is_file():
                    found[key] = candidate
                    break
        if len(found) == len(FASHION_MNIST_FILES):
            return found
    return None


def _download_fashion_mnist(root: Path) -> None:
    from torchvision.datasets import FashionMNIST  # lazy: importing torchvision is slow

    log.info("downloading Fashion-MNIST into %s", root)
    try:
        FashionMNIST(str(root), train=True, download=True)
    except (OSError, RuntimeError) as exc:
        mirrors = " or ".join(FashionMNIST.mirrors)
        raise DataError(
            f"could not download Fashion-MNIST ({type(exc).__name__}: {exc}). Install Debian's "
            f"dataset-fashion-mnist, or fetch the four *-ubyte.gz files from {mirrors} into "
            f"{root / 'FashionMNIST' / 'raw'}."
        ) from exc


def _idx_pair(images_path: Path, labels_path: Path) -> _Pair:
    # The most a Fashion-MNIST file can hold: the official split sizes of 28x28 images. A
    # header declaring more is refused before any data is inflated.
    most = max(OFFICIAL_SIZES["fashion_mnist"])
    images = read_idx(images_path, ndim=3, max_shape=(most, 28, 28))
    labels = read_idx(labels_path, ndim=1, max_shape=(most,))
    if labels.shape[0] != images.shape[0]:
        raise _corrupt(labels_path, f"{labels.shape[0]} labels for {images.shape[0]} images")
    if labels.numel() and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
        raise _corrupt(labels_path, f"label {int(labels.max())} is not in [0, 10)")
    return images.unsqueeze(1), labels.to(torch.int64)


def read_idx(path: Path, ndim: int, max_shape: Sequence[int] | None = None) -> torch.Tensor:
    """Parse an IDX file of unsigned bytes (gzipped or not): magic 0x0000 08 <ndim>, then
    ``ndim`` big-endian uint32 sizes, then the data. Raises :class:`DataError` on a bad magic
    number, a truncated or oversized file, or (with ``max_shape``) declared sizes larger than
    such a dataset can be.

    The file is streamed: the header is checked first, then exactly the declared bytes are
    read into the tensor (plus one to detect trailing data), so a small gzip that inflates to
    gigabytes is refused after reading its header, and memory stays at the data's size."""
    from zoo._fs import open_regular

    try:
        with open_regular(path, error=DataError) as f:
            gzipped = f.peek(2)[:2] == b"\x1f\x8b" if hasattr(f, "peek") else False
            stream: Any = gzip.GzipFile(fileobj=f, mode="rb") if gzipped else f
            with stream:
                return _read_idx_stream(stream, path, ndim, max_shape)
    except FileNotFoundError:
        raise _corrupt(path, "the file is missing") from None
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise _corrupt(path, f"broken gzip stream ({exc})") from None


def _read_idx_stream(
    stream: Any, path: Path, ndim: int, max_shape: Sequence[int] | None
) -> torch.Tensor:
    head = stream.read(4 + 4 * ndim)
    if len(head) < 4 or head[:2] != b"\0\0" or head[2] != 0x08 or head[3] != ndim:
        raise _corrupt(
            path,
            f"bad IDX magic {head[:4].hex()!r}, expected '000008{ndim:02x}' (uint8, {ndim}-d)",
        )
    if len(head) < 4 + 4 * ndim:
        raise _corrupt(path, "file ends inside the IDX header (truncated)")
    dims = struct.unpack(f">{ndim}I", head[4:])
    expected = math.prod(dims)
    if max_shape is not None and any(d > m for d, m in zip(dims, max_shape, strict=True)):
        raise _corrupt(
            path,
            f"header declares shape {dims} ({expected} bytes), more than such a dataset can "
            f"hold (at most {tuple(max_shape)})",
        )
    data = torch.empty(expected, dtype=torch.uint8)
    view: memoryview = data.numpy().data  # uint8, 1-d: readinto fills the tensor in place
    got = 0
    while got < expected:
        n = stream.readinto(view[got:])
        if not n:
            break
        got += n
    if got != expected or stream.read(1):
        found = f"{got}" if got != expected else f"more than {expected}"
        raise _corrupt(path, f"header says {dims} = {expected} bytes of data, file has {found}")
    return data.reshape(dims)


# --------------------------------------------------------------------------------------------
# Synthetic
# --------------------------------------------------------------------------------------------


def _synthetic_params(given: Mapping[str, Any] | None, valid_size: int | None) -> dict[str, int]:
    params = dict(SYNTHETIC_DEFAULTS)
    for key, value in (given or {}).items():
        if key not in SYNTHETIC_DEFAULTS:
            raise DataError(
                f"unknown synthetic setting {key!r}; valid: {', '.join(SYNTHETIC_DEFAULTS)}."
                + did_you_mean(str(key), SYNTHETIC_DEFAULTS)
            )
        params[key] = value
    if valid_size is not None:  # build(valid_size=...) wins over synthetic.valid_size
        params["valid_size"] = valid_size
    for key, value in params.items():
        minimum = {"valid_size": 0, "seed": 0}.get(key, 1)
        _check_count(f"synthetic.{key}", value, minimum)
    pixels = params["in_chans"] * params["img_size"] ** 2
    total = params["train_size"] + params["valid_size"] + params["test_size"]
    if total * pixels > MAX_SYNTHETIC_BYTES:
        raise DataError(
            f"synthetic dataset of {total} images x {pixels} bytes = {total * pixels / 2**30:.1f}"
            f" GiB exceeds the {MAX_SYNTHETIC_BYTES // 2**30} GiB limit; use fewer or smaller "
            "images."
        )
    return params


def _make_synthetic(params: Mapping[str, int]) -> tuple[_Pair, _Pair, tuple[str, ...]]:
    """Each class has a smooth random prototype (a 4x4 pattern upsampled, so crops and flips
    keep it recognisable); an image is its class prototype plus Gaussian noise, as uint8."""
    gen = torch.Generator().manual_seed(params["seed"])
    k, c, size = params["num_classes"], params["in_chans"], params["img_size"]
    coarse = torch.rand(k, c, 4, 4, generator=gen) * 160 + 48
    prototypes = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    pool = _synthetic_images(prototypes, params["train_size"] + params["valid_size"], gen)
    test = _synthetic_images(prototypes, params["test_size"], gen)
    return pool, test, tuple(f"class_{i}" for i in range(k))


def _synthetic_images(prototypes: torch.Tensor, n: int, gen: torch.Generator) -> _Pair:
    k = prototypes.shape[0]
    labels = (torch.arange(n) % k)[torch.randperm(n, generator=gen)]  # balanced classes
    images = torch.empty(n, *prototypes.shape[1:], dtype=torch.uint8)
    for start in range(0, n, 4096):  # chunks bound the float32 temporary
        y = labels[start : start + 4096]
        noise = torch.randn(len(y), *prototypes.shape[1:], generator=gen) * 40
        images[start : start + 4096] = (prototypes[y] + noise).round_().clamp_(0, 255).byte()
    return images, labels


# --------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------


def num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)


def batches(
    split: Split,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None,
    augment: AugmentConfig | None,
    mean: Sequence[float],
    std: Sequence[float],
    drop_last: bool = False,
    channels_last: bool = False,
    order: torch.Tensor | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (float32 normalised images, int64 labels) on the split's device.

    All randomness (order and augmentation) is drawn on the CPU from ``generator``, so the
    same seed gives the same batches on every device. ``order`` gives the indices to visit
    instead (a distributed rank's shard); ``shuffle`` is then ignored.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
    scale, shift = _normalise_constants(mean, std, split.images.device)
    if order is None:
        n = len(split)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    n = len(order)
    order = order.to(split.images.device)
    index_batches = [
        order[b * batch_size : (b + 1) * batch_size]
        for b in range(num_batches(n, batch_size, drop_last))
    ]
    for idx, images in zip(index_batches, split.fetch(index_batches), strict=True):
        if augment is not None:
            images = apply_augment(images, augment, generator)
        # Both branches give a fresh float32 tensor, so normalising in place is safe.
        images = images.float() if images.dtype != torch.float32 else images
        images = images.mul_(scale).add_(shift)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        yield images, split.labels[idx]


def normalise(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(pixels / 255 - mean) / std per channel, for uint8 or float pixels in [0, 255]."""
    scale, shift = _normalise_constants(mean, std, images.device)
    return images.to(torch.float32, copy=True).mul_(scale).add_(shift)


def _normalise_constants(
    mean: Sequence[float], std: Sequence[float], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with pixels * scale + shift == (pixels / 255 - mean) / std."""
    scale = 1.0 / (torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1) * 255)
    shift = -torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1) * 255 * scale
    return scale, shift
