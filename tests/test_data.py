"""Datasets (CIFAR-10 pickles, Fashion-MNIST IDX, synthetic), splits and batches()."""

from __future__ import annotations

import gzip
import math
import pickle
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from zoo.data import datasets as data
from zoo.data.augment import AugmentConfig
from zoo.errors import DataError

# --------------------------------------------------------------------------------------------
# CIFAR-10 in its real on-disk format, a few images per batch
# --------------------------------------------------------------------------------------------

PER_BATCH = 4  # images in each data_batch_i; 5 batches -> 20 training images
TEST_IMAGES = 6


def _cifar_rows(first_id: int, count: int) -> np.ndarray:
    """Image k has red plane = id, green = id + 100, blue = id + 200 (uint8, (count, 3072))."""
    ids = np.arange(first_id, first_id + count, dtype=np.uint8)[:, None]
    planes = [np.repeat(ids + offset, 1024, axis=1) for offset in (0, 100, 200)]
    return np.concatenate(planes, axis=1).astype(np.uint8)


def _write_batch(path: Path, rows: np.ndarray, labels: list[int], python2_style: bool) -> None:
    if python2_style:
        # Like the published files: protocol 2, byte-string keys, numpy's pre-2.0 module name.
        batch = {b"batch_label": b"x", b"labels": labels, b"data": rows}
        raw = pickle.dumps(batch, protocol=2).replace(b"numpy._core.", b"numpy.core.")
    else:  # like torchvision's own fake CIFAR files in its test-suite
        raw = pickle.dumps({"batch_label": "x", "labels": labels, "data": rows})
    path.write_bytes(raw)


def _write_cifar(root: Path) -> Path:
    base = root / data.CIFAR10_DIR
    base.mkdir(parents=True)
    for b, name in enumerate(data.CIFAR10_TRAIN_FILES):
        first = b * PER_BATCH
        labels = [(first + k) % 10 for k in range(PER_BATCH)]
        _write_batch(base / name, _cifar_rows(first, PER_BATCH), labels, python2_style=b % 2 == 0)
    _write_batch(base / "test_batch", _cifar_rows(50, TEST_IMAGES), [3] * TEST_IMAGES, True)
    names = ["airplane", "automobile", "bird", "cat", "deer"]
    names += ["dog", "frog", "horse", "ship", "truck"]
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
    return base


def test_cifar10_reads_the_real_pickle_format(tmp_path: Path) -> None:
    _write_cifar(tmp_path)
    bundle = data.build("cifar10", tmp_path, valid_size=5, download=False)
    assert (len(bundle.train), len(bundle.valid), len(bundle.test)) == (15, 5, TEST_IMAGES)
    assert (bundle.num_classes, bundle.in_chans, bundle.img_size) == (10, 3, 32)
    assert bundle.classes[0] == "airplane" and bundle.classes[9] == "truck"
    train = bundle.train
    assert train.images.dtype == torch.uint8 and train.images.shape[1:] == (3, 32, 32)
    assert train.labels.dtype == torch.int64 and train.images.is_contiguous()
    ids = torch.cat([train.images, bundle.valid.images])[:, 0, 0, 0]
    assert sorted(ids.tolist()) == list(range(20))  # every image exactly once, none lost
    images = torch.cat([train.images, bundle.valid.images])
    labels = torch.cat([train.labels, bundle.valid.labels])
    # Rows are R, G, B planes; labels travel with their image.
    assert torch.equal(images[:, 1], images[:, 0] + 100) and torch.equal(
        images[:, 2], images[:, 0] + 200
    )
    assert torch.equal(labels, images[:, 0, 0, 0].long() % 10)
    assert bundle.test.images[:, 0, 0, 0].tolist() == list(range(50, 50 + TEST_IMAGES))


def test_cifar10_split_is_seeded_and_fixed(tmp_path: Path) -> None:
    _write_cifar(tmp_path)

    def valid_ids(seed: int) -> list[int]:
        bundle = data.build("cifar10", tmp_path, valid_size=5, split_seed=seed, download=False)
        return bundle.valid.images[:, 0, 0, 0].tolist()

    assert valid_ids(0) == valid_ids(0)
    assert valid_ids(0) != valid_ids(1)


def test_cifar10_subsets_and_impossible_splits(tmp_path: Path) -> None:
    _write_cifar(tmp_path)
    bundle = data.build(
        "cifar10", tmp_path, valid_size=5, train_subset=7, test_subset=2, download=False
    )
    assert (len(bundle.train), len(bundle.test)) == (7, 2)
    with pytest.raises(DataError, match=r"valid_size=5000 .* 20 training images"):
        data.build("cifar10", tmp_path, download=False)  # the default 5000 does not fit
    with pytest.raises(DataError, match="train_subset=16 is larger than the 15"):
        data.build("cifar10", tmp_path, valid_size=5, train_subset=16, download=False)
    with pytest.raises(DataError, match="test_subset=7"):
        data.build("cifar10", tmp_path, valid_size=5, test_subset=7, download=False)
    with pytest.raises(DataError, match="valid_size must be an integer >= 0, got -1"):
        data.build("cifar10", tmp_path, valid_size=-1, download=False)


def test_cifar10_missing_files_say_what_to_fetch_and_where(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        data.build("cifar10", tmp_path, download=False)
    assert data.CIFAR10_URL in str(err.value) and str(tmp_path) in str(err.value)


def test_cifar10_offline_download_says_what_to_fetch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision.datasets

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(DataError, match="could not download CIFAR-10") as err:
        data.build("cifar10", tmp_path)
    assert data.CIFAR10_URL in str(err.value) and str(tmp_path) in str(err.value)


class _Exploit:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (exec, (f"open({str(self.target)!r}, 'w').close()",))


def test_cifar10_pickle_cannot_run_code(tmp_path: Path) -> None:
    base = _write_cifar(tmp_path)
    victim = tmp_path / "pwned"
    (base / "data_batch_3").write_bytes(pickle.dumps({"data": _Exploit(victim), "labels": []}))
    with pytest.raises(DataError, match=r"data_batch_3.*builtins.exec is not allowed"):
        data.build("cifar10", tmp_path, valid_size=5, download=False)
    assert not victim.exists()


@pytest.mark.parametrize(
    "content, message",
    [
        (pickle.dumps({"labels": [0]}), "no 'data' entry"),
        (
            pickle.dumps({"data": np.zeros((2, 10), np.uint8), "labels": [0, 1]}),
            r"uint8 \(N, 3072\)",
        ),
        (pickle.dumps({"data": _cifar_rows(0, 2), "labels": [0, 11]}), r"integers in \[0, 10\)"),
        (pickle.dumps([1, 2]), "expected a pickled dict"),
        (b"\x80\x04garbage", "UnpicklingError|EOFError"),
    ],
)
def test_cifar10_corrupt_batches_are_reported(tmp_path: Path, content: bytes, message: str) -> None:
    base = _write_cifar(tmp_path)
    (base / "data_batch_2").write_bytes(content)
    with pytest.raises(DataError, match=f"corrupt dataset file .*data_batch_2.*({message})"):
        data.build("cifar10", tmp_path, valid_size=5, download=False)


# --------------------------------------------------------------------------------------------
# Fashion-MNIST IDX files
# --------------------------------------------------------------------------------------------


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_fashion(directory: Path, train: int = 8, test: int = 4, gz: bool = True) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        # Image k, pixel (r, c) = 3k + r + c: the first pixel names the image, the rest the layout.
        "train_images": 3 * np.arange(train)[:, None, None]
        + np.add.outer(np.arange(28), np.arange(28)),
        "train_labels": np.arange(train) % 10,
        "test_images": np.full((test, 28, 28), 7),
        "test_labels": np.arange(test) % 10,
    }
    for key, stem in data.FASHION_MNIST_FILES.items():
        raw = _idx(arrays[key])
        if gz:
            (directory / f"{stem}.gz").write_bytes(gzip.compress(raw))
        else:
            (directory / stem).write_bytes(raw)


@pytest.fixture
def no_debian(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Pretend Debian's package is not installed (this machine may have it)."""
    missing = tmp_path / "no-debian"
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", missing)
    return missing


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_reads_idx_files(tmp_path: Path, no_debian: Path, gz: bool) -> None:
    _write_fashion(tmp_path / "FashionMNIST" / "raw", gz=gz)
    bundle = data.build("fashion_mnist", tmp_path, valid_size=3, download=False)
    assert (len(bundle.train), len(bundle.valid), len(bundle.test)) == (5, 3, 4)
    assert bundle.train.images.shape[1:] == (1, 28, 28) and bundle.train.images.dtype == torch.uint8
    assert (bundle.num_classes, bundle.in_chans, bundle.img_size) == (10, 1, 28)
    assert bundle.classes[9] == "Ankle boot"
    assert bundle.test.images.unique().tolist() == [7]
    images = torch.cat([bundle.train.images, bundle.valid.images])
    labels = torch.cat([bundle.train.labels, bundle.valid.labels])
    ids = images[:, 0, 0, 0].long() // 3
    assert sorted(ids.tolist()) == list(range(8)) and torch.equal(labels, ids % 10)
    rows_cols = torch.arange(28).view(28, 1) + torch.arange(28).view(1, 28)
    assert torch.equal(images[:, 0].long() - 3 * ids.view(-1, 1, 1), rows_cols.expand(8, 28, 28))


def test_fashion_mnist_falls_back_to_debian_location(tmp_path: Path, no_debian: Path) -> None:
    _write_fashion(no_debian)
    bundle = data.build("fashion_mnist", tmp_path / "empty", valid_size=2, download=False)
    assert len(bundle.train) + len(bundle.valid) == 8


def test_fashion_mnist_missing_files_say_how_to_get_them(tmp_path: Path, no_debian: Path) -> None:
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist") as err:
        data.build("fashion_mnist", tmp_path, download=False)
    assert str(tmp_path / "FashionMNIST" / "raw") in str(err.value)


def _corrupt_truncated(raw: bytes) -> bytes:
    return gzip.compress(raw)[:-12]  # cut inside the gzip stream


@pytest.mark.parametrize(
    "mangle, message",
    [
        (_corrupt_truncated, "broken gzip stream"),
        (lambda raw: gzip.compress(raw[:-5]), r"header says \(8, 28, 28\) = 6272 bytes"),
        (lambda raw: gzip.compress(b"\x00\x00\x08\x01" + raw[4:]), "bad IDX magic '00000801'"),
        (lambda raw: gzip.compress(raw[:9]), "truncated"),
    ],
)
def test_fashion_mnist_corrupt_files_are_reported(
    tmp_path: Path, no_debian: Path, mangle: object, message: str
) -> None:
    raw_dir = tmp_path / "FashionMNIST" / "raw"
    _write_fashion(raw_dir)
    path = raw_dir / "train-images-idx3-ubyte.gz"
    path.write_bytes(mangle(gzip.decompress(path.read_bytes())))  # type: ignore[operator]
    with pytest.raises(DataError, match=f"corrupt dataset file .*train-images.*{message}"):
        data.build("fashion_mnist", tmp_path, valid_size=2, download=False)


@pytest.mark.integration
@pytest.mark.skipif(
    not (data.DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").exists(),
    reason="Debian's dataset-fashion-mnist is not installed",
)
def test_real_fashion_mnist_from_debian(tmp_path: Path) -> None:
    bundle = data.build("fashion_mnist", tmp_path / "empty", download=False)
    assert (len(bundle.train), len(bundle.valid), len(bundle.test)) == (55000, 5000, 10000)
    assert bundle.train.images.shape == (55000, 1, 28, 28)
    assert bundle.train.labels.bincount().min() > 5000  # roughly balanced, 10 classes
    assert bundle.mean[0] == pytest.approx(0.286, abs=0.002)
    assert bundle.std[0] == pytest.approx(0.353, abs=0.002)


# --------------------------------------------------------------------------------------------
# Names, roots, synthetic
# --------------------------------------------------------------------------------------------


def test_unknown_dataset_suggests_close_names() -> None:
    with pytest.raises(DataError, match=r"unknown dataset 'cifar_10'.*Did you mean: cifar10"):
        data.build("cifar_10")


def test_root_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ZOO_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert data.default_root() == tmp_path / "cache" / "zoo" / "data"
    monkeypatch.setenv("ZOO_DATA", str(tmp_path / "zoo-data"))
    assert data.default_root() == tmp_path / "zoo-data"
    _write_cifar(tmp_path / "zoo-data")
    assert len(data.build("cifar10", valid_size=1, download=False).train) == 19


def test_synthetic_shapes_dtypes_labels() -> None:
    settings = {"num_classes": 3, "in_chans": 2, "img_size": 9, "train_size": 30, "test_size": 12}
    bundle = data.build("synthetic", valid_size=6, synthetic=settings)
    assert (len(bundle.train), len(bundle.valid), len(bundle.test)) == (30, 6, 12)
    assert bundle.train.images.shape == (30, 2, 9, 9) and bundle.train.images.dtype == torch.uint8
    assert bundle.test.labels.dtype == torch.int64 and set(bundle.test.labels.tolist()) == {0, 1, 2}
    assert (bundle.num_classes, bundle.in_chans, bundle.img_size) == (3, 2, 9)
    assert len(bundle.mean) == len(bundle.std) == 2 and len(bundle.classes) == 3
    again = data.build("synthetic", valid_size=6, synthetic=settings)
    assert torch.equal(again.train.images, bundle.train.images)


def test_synthetic_bad_settings() -> None:
    with pytest.raises(DataError, match=r"unknown synthetic setting 'num_class'.*num_classes"):
        data.build("synthetic", synthetic={"num_class": 3})
    with pytest.raises(DataError, match=r"synthetic.img_size must be an integer >= 1, got 0"):
        data.build("synthetic", synthetic={"img_size": 0})
    with pytest.raises(DataError, match="GiB exceeds the 4 GiB limit"):  # refused before allocating
        data.build("synthetic", synthetic={"train_size": 10**7, "img_size": 224})
    with pytest.raises(DataError, match="synthetic settings were given for dataset 'cifar10'"):
        data.build("cifar10", synthetic={"seed": 1})


# --------------------------------------------------------------------------------------------
# batches()
# --------------------------------------------------------------------------------------------


def _random_images(n: int = 64, c: int = 3, size: int = 12) -> torch.Tensor:
    return torch.randint(
        0, 256, (n, c, size, size), generator=torch.Generator().manual_seed(0)
    ).byte()


def _indexed_split(n: int = 50) -> data.Split:
    """Labels are 0..n-1 so a batch says exactly which samples it holds."""
    return data.Split(_random_images(n=n, size=8), torch.arange(n))


def test_no_augment_is_plain_normalisation_in_order() -> None:
    split = _indexed_split()
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 0.2)
    got = list(
        data.batches(split, 16, shuffle=False, generator=None, augment=None, mean=mean, std=std)
    )
    images = torch.cat([x for x, _ in got])
    expect = (split.images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(
        std
    ).view(1, 3, 1, 1)
    assert images.dtype == torch.float32 and torch.allclose(images, expect, atol=1e-5)
    assert torch.equal(torch.cat([y for _, y in got]), split.labels)


def test_normalised_train_split_has_zero_mean_unit_std() -> None:
    bundle = data.build("synthetic", synthetic={"train_size": 500, "in_chans": 3, "img_size": 8})
    x = torch.cat(
        [
            x
            for x, _ in data.batches(
                bundle.train,
                128,
                shuffle=False,
                generator=None,
                augment=None,
                mean=bundle.mean,
                std=bundle.std,
            )
        ]
    )
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(x.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3)


@pytest.mark.parametrize("drop_last", [False, True])
def test_an_epoch_covers_every_sample_once(drop_last: bool) -> None:
    split = _indexed_split(50)
    config = AugmentConfig(hflip=True, crop_scale=(0.8, 1.0), crop_padding=1)
    got = list(
        data.batches(
            split,
            16,
            shuffle=True,
            generator=torch.Generator().manual_seed(0),
            augment=config,
            mean=(0.5,) * 3,
            std=(0.5,) * 3,
            drop_last=drop_last,
        )
    )
    assert len(got) == data.num_batches(50, 16, drop_last) == (3 if drop_last else 4)
    labels = torch.cat([y for _, y in got]).tolist()
    assert len(labels) == len(set(labels)) == (48 if drop_last else 50)
    assert labels != sorted(labels)  # shuffled


def test_same_generator_seed_gives_same_batches() -> None:
    split = _indexed_split(40)
    config = AugmentConfig(
        hflip=True, crop_scale=(0.5, 1.0), crop_ratio=(0.8, 1.25), crop_padding=2
    )

    def epoch(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(seed)
        return list(
            data.batches(
                split,
                16,
                shuffle=True,
                generator=gen,
                augment=config,
                mean=(0.5,) * 3,
                std=(0.5,) * 3,
            )
        )

    first, again, other = epoch(7), epoch(7), epoch(8)
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        for a, b in zip(first, again, strict=True)
    )
    assert not torch.equal(first[0][1], other[0][1])


def test_channels_last_and_bad_batch_size() -> None:
    split = _indexed_split(4)
    x, _ = next(
        data.batches(
            split,
            4,
            shuffle=False,
            generator=None,
            augment=None,
            mean=(0,) * 3,
            std=(1,) * 3,
            channels_last=True,
        )
    )
    assert x.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(DataError, match="batch_size must be an integer >= 1, got 0"):
        next(
            data.batches(
                split, 0, shuffle=False, generator=None, augment=None, mean=(0,) * 3, std=(1,) * 3
            )
        )


def test_num_batches() -> None:
    assert [data.num_batches(n, 4, False) for n in (0, 1, 4, 5)] == [0, 1, 1, 2]
    assert [data.num_batches(n, 4, True) for n in (0, 3, 4, 9)] == [0, 0, 1, 2]
    assert math.ceil(10 / 3) == data.num_batches(10, 3, False)
