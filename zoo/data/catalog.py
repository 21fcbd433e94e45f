"""Facts about the built-in datasets, shared by the recipe checks and the loaders.

Plain data, no torch: a recipe is validated against these numbers before anything is
loaded, and :mod:`zoo.data.datasets` loads against the same ones.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "CIFAR10_CLASSES",
    "DATASETS",
    "DEBIAN_FASHION_MNIST",
    "DEFAULT_VALID_SIZE",
    "FASHION_MNIST_CLASSES",
    "GEOMETRY",
    "MAX_SYNTHETIC_BYTES",
    "NORMALISATION",
    "OFFICIAL_SIZES",
    "SYNTHETIC_DEFAULTS",
]

# imagefolder: your own images, train/ [val/] [test/] with one folder per class
# (zoo.data.imagefolder); its geometry comes from the model and data.img_size.
DATASETS: tuple[str, ...] = ("cifar10", "fashion_mnist", "synthetic", "imagefolder")
# (classes, channels, image size) of the real datasets and their official (train, test) sizes.
GEOMETRY: dict[str, tuple[int, int, int]] = {"cifar10": (10, 3, 32), "fashion_mnist": (10, 1, 28)}
# The well-known per-channel mean/std of the real datasets' training sets, for weights whose
# config.json does not record the values they were trained with (exports of an older zoo).
NORMALISATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
}
OFFICIAL_SIZES: dict[str, tuple[int, int]] = {
    "cifar10": (50_000, 10_000),
    "fashion_mnist": (60_000, 10_000),
}
DEFAULT_VALID_SIZE = 5000  # held out of the official training set, seeded
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
# Where Debian's `dataset-fashion-mnist` package installs the four gzipped IDX files.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
SYNTHETIC_DEFAULTS: dict[str, int] = {
    "num_classes": 10,
    "in_chans": 3,
    "img_size": 32,
    "train_size": 1000,
    "valid_size": 200,
    "test_size": 200,
    "seed": 0,
}
# A synthetic dataset bigger than this is almost certainly a typo (an extra zero or two).
MAX_SYNTHETIC_BYTES = 4 << 30
