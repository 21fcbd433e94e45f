"""Hostile catalogue, class 4 (issue 15): sizes checked before allocating. Dataset files are
checked against what such a dataset can be before they are inflated, reading stops at the
declared size, text readers are byte-capped, and models and benchmark steps are estimated
(on the meta device) and refused above the machine's memory with the estimate."""

from __future__ import annotations

import gzip
import json
import os
import struct
import threading
import zlib
from pathlib import Path
from typing import Any

import pytest
import torch
from hostile_helpers import assert_refused, invoke
from publish_helpers import make_run

import zoo
from zoo.analysis.bench import estimate_bytes
from zoo.data import datasets as data
from zoo.errors import DataError, ModelArgumentError, ZooError

FILES = data.FASHION_MNIST_FILES


@pytest.fixture
def raw_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A valid tiny Fashion-MNIST in torchvision's layout (Debian's copy hidden)."""
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
    directory = tmp_path / "FashionMNIST" / "raw"
    directory.mkdir(parents=True)
    for key, stem in FILES.items():
        n = 8 if key.startswith("train") else 4
        shape = (n, 28, 28) if key.endswith("images") else (n,)
        header = bytes([0, 0, 8, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)
        body = bytes(n * 28 * 28) if key.endswith("images") else bytes(n)
        (directory / f"{stem}.gz").write_bytes(gzip.compress(header + body))
    return directory


def _bomb(path: Path, shape: tuple[int, ...], inflated: int) -> None:
    """A gzipped IDX file declaring ``shape`` whose stream inflates to ``inflated`` bytes."""
    header = bytes([0, 0, 8, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)
    squeeze = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: gzip container
    chunk = bytes(1 << 20)
    parts = [squeeze.compress(header)]
    for _ in range(inflated >> 20):
        parts.append(squeeze.compress(chunk))
    parts.append(squeeze.flush())
    path.write_bytes(b"".join(parts))


def _build(root: Path) -> Any:
    return data.build("fashion_mnist", root, valid_size=2, download=False)


def test_idx_header_declaring_more_images_than_the_dataset_has(raw_dir: Path) -> None:
    _bomb(raw_dir / f"{FILES['train_images']}.gz", (10**7, 28, 28), 1 << 20)
    with pytest.raises(DataError, match=r"train-images.*more than such a dataset can hold"):
        _build(raw_dir.parent.parent)


def test_idx_header_declaring_huge_images(raw_dir: Path) -> None:
    _bomb(raw_dir / f"{FILES['train_images']}.gz", (8, 4096, 4096), 1 << 20)
    with pytest.raises(DataError, match=r"\(8, 4096, 4096\)"):
        _build(raw_dir.parent.parent)


def test_idx_gzip_bomb_stops_at_the_declared_size(
    raw_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _bomb(raw_dir / f"{FILES['train_images']}.gz", (8, 28, 28), 64 << 20)
    inflated = []
    real = gzip.GzipFile.read

    def counting(self: gzip.GzipFile, size: int = -1) -> bytes:
        out = real(self, size)
        inflated.append(len(out))
        return out

    monkeypatch.setattr(gzip.GzipFile, "read", counting)
    with pytest.raises(DataError, match=r"header says \(8, 28, 28\).*more than 6272"):
        _build(raw_dir.parent.parent)
    assert sum(inflated) < 1 << 20  # the header, then one byte past the data: not 64 MiB


def test_idx_file_that_is_a_fifo_is_not_found_nor_hangs(raw_dir: Path) -> None:
    path = raw_dir / f"{FILES['train_labels']}.gz"
    path.unlink()
    os.mkfifo(path)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            _build(raw_dir.parent.parent)
        except BaseException as e:
            errors.append(e)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "a FIFO in the dataset folder hangs the loader"
    assert errors and isinstance(errors[0], DataError)


def test_idx_file_linked_out_of_its_folder_is_refused(raw_dir: Path, tmp_path: Path) -> None:
    path = raw_dir / f"{FILES['train_labels']}.gz"
    elsewhere = tmp_path / "elsewhere.gz"
    path.rename(elsewhere)
    path.symlink_to(elsewhere)
    with pytest.raises(DataError, match="outside"):
        _build(raw_dir.parent.parent)


def test_cifar_batch_larger_than_a_batch_can_be_is_not_unpickled(tmp_path: Path) -> None:
    base = tmp_path / data.CIFAR10_DIR
    base.mkdir()
    with open(base / "data_batch_1", "wb") as f:
        f.truncate(100 << 20)  # sparse: no disk used
    with pytest.raises(DataError, match="more than a CIFAR-10 batch can be"):
        data._unpickle_cifar(base / "data_batch_1")


# -- capped JSON readers --------------------------------------------------------------------


def test_oversized_config_json_is_refused(tmp_path: Path) -> None:
    run, _ = make_run(tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps(config) + " " * (17 << 20))
    assert_refused(invoke("export", str(run)), "config.json", "16 MiB")


def test_oversized_metrics_are_refused_by_resume(tmp_path: Path) -> None:
    from zoo.runs import files

    run, _ = make_run(tmp_path / "run")
    with open(run / "metrics.jsonl", "ab") as f:
        f.truncate(files.MAX_TEXT_BYTES + 10)  # sparse
    with pytest.raises(ZooError, match=r"metrics\.jsonl is over 64 MiB"):
        files.read_metrics(run)


NESTED = "[" * 100_000 + "]" * 100_000  # 200 KB: under every cap, past Python's recursion
HUGE_INT = "9" * 5_000  # past Python's int-from-text digit limit


@pytest.mark.parametrize("payload", [NESTED, '{"epoch": ' + HUGE_INT + "}"])
@pytest.mark.parametrize("name", ["config.json", "summary.json", "metrics.jsonl"])
def test_json_nested_too_deep_or_with_a_huge_integer_is_one_line(
    tmp_path: Path, name: str, payload: str
) -> None:
    """json.loads raises RecursionError or a digit-limit ValueError on these, not a
    JSONDecodeError: every run-file reader answers them as a damaged file."""
    from zoo.runs import files

    run, _ = make_run(tmp_path / "run")
    (run / name).write_text(payload + "\n")
    if name == "config.json":
        assert_refused(invoke("export", str(run), "--out", str(tmp_path / "x")), "config.json")
        with pytest.raises(ZooError, match=r"config\.json"):
            zoo.create(str(run))
    elif name == "summary.json":
        with pytest.raises(ZooError, match=r"summary\.json"):
            files.read_json(run / name)
    else:
        assert_refused(invoke("plot", str(run), "--out", str(tmp_path / "p")), "metrics.jsonl")


# -- models and benchmark steps are estimated before allocating -----------------------------


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["-b", str(10**20)], "batch size must be between 1 and"),  # torch overflowed
        (["-b", "0"], "batch size must be between 1 and"),
        (["--min-time", "1e308"], "min_time must be between 0 and 3600"),  # timed for ever
    ],
)
def test_bench_numbers_past_any_machine_are_one_line(args: list[str], fragment: str) -> None:
    assert_refused(invoke("bench", "mlp_relu", "--device", "cpu", *args), fragment)


def test_create_with_a_billion_classes_is_refused_with_the_estimate() -> None:
    with pytest.raises(ModelArgumentError, match=r"num_classes=1000000000.*GiB.*available"):
        zoo.create("mlp_relu", num_classes=10**9)


def test_create_with_a_huge_image_is_refused_with_the_estimate() -> None:
    with pytest.raises(ModelArgumentError, match=r"img_size=100000.*parameters.*GiB"):
        zoo.create("mlp_relu", img_size=100_000)


@pytest.mark.parametrize(
    "model, kwargs",
    [
        (model, kwargs)
        for model in ("mlp_relu", "resnet18", "mlpmixer_p4")
        for kwargs in ({"num_classes": 10**30}, {"in_chans": 10**12}, {"img_size": 10**13})
        # resnet18 is fully convolutional: any image size builds (bench checks activations)
        if not (model == "resnet18" and "img_size" in kwargs)
    ],
)
def test_sizes_past_what_torch_can_hold_are_one_line_without_cpp_frames(
    model: str, kwargs: dict[str, int]
) -> None:
    """Sizes that overflow torch's 64-bit sizes (or Python's memory while building the config)
    are refused before anything is allocated, in one line, without torch's C++ stack."""
    with pytest.raises(ModelArgumentError) as caught:
        zoo.create(model, **kwargs)
    message = str(caught.value)
    name, value = next(iter(kwargs.items()))
    assert f"{name}={value}" in message and "choose smaller arguments" in message
    assert "frame #" not in message and "Exception raised from" not in message
    assert "\n" not in message and len(message) < 600


@pytest.mark.parametrize("option", ["--in-chans", "--img-size"])
def test_bench_with_sizes_past_torch_is_one_line(option: str) -> None:
    result = invoke("bench", "mlp_relu", "-b", "2", option, str(10**13))
    line = assert_refused(result, "too large", "choose smaller arguments")
    assert "frame #" not in line


def test_huge_model_in_a_recipe_is_refused_before_allocating(tmp_path: Path) -> None:
    from zoo.devices import memory_budget

    budget = memory_budget("cpu")
    assert budget is not None
    width = int((budget / 4) ** 0.5) + 1000  # one square layer larger than memory
    with pytest.raises(ModelArgumentError, match="GiB"):
        zoo.create("mlp_relu", hidden_sizes=[width, width])


def test_bench_batch_too_large_for_memory(tmp_path: Path) -> None:
    line = assert_refused(
        invoke("bench", "mlp_relu", "-b", "10000000", "--mode", "inference"), "GiB", "-b"
    )
    assert "batch size 10000000" in line


def test_bench_image_too_large_for_memory() -> None:
    result = invoke("bench", "resnet18", "--img-size", "100000", "-b", "1", "--mode", "train")
    assert_refused(result, "100000x100000", "GiB")


def test_bench_image_too_large_for_an_mlp_is_refused_at_build() -> None:
    assert_refused(invoke("bench", "mlp_relu", "--img-size", "100000"), "img_size=100000", "GiB")


def test_bench_estimate_is_an_upper_bound_of_weights_and_input() -> None:
    net = zoo.create("mlp_relu", hidden_sizes=[64], img_size=8, in_chans=1, num_classes=10)
    weights = sum(p.numel() * 4 for p in net.parameters())
    infer = estimate_bytes(net, (1, 8, 8), 32, "inference")
    train = estimate_bytes(net, (1, 8, 8), 32, "train")
    assert infer is not None and train is not None
    assert infer >= weights + 32 * 64 * 4
    assert train >= 4 * weights + infer - weights  # grads and moments, every activation
    assert not any(p.is_meta for p in net.parameters())  # the model itself is untouched
    assert torch.get_default_device().type == "cpu"


MEASURE = """
import resource, sys
from pathlib import Path
from zoo.data.datasets import read_idx
from zoo.errors import DataError
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    read_idx(Path(sys.argv[1]), ndim=3, max_shape=(60000, 28, 28))
except DataError as e:
    print("refused:", e, file=sys.stderr)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


@pytest.mark.slow
def test_idx_gzip_bomb_peak_memory_stays_within_twice_the_data(tmp_path: Path) -> None:
    """A 512 MiB-inflating gzip declaring a full Fashion-MNIST training set (47 MB): refused
    once past the declared size, with peak memory under 2x the legitimate data."""
    import subprocess
    import sys

    path = tmp_path / "train-images-idx3-ubyte.gz"
    _bomb(path, (60000, 28, 28), 512 << 20)
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path)], capture_output=True, text=True, timeout=600
    )
    assert "refused:" in out.stderr and "more than" in out.stderr, out.stderr
    legit = 60000 * 28 * 28
    assert int(out.stdout.strip()) < 2 * legit, out.stdout


def test_a_tiny_crop_pct_in_a_config_is_refused_before_resizing(tmp_path: Path) -> None:
    """config.json's crop_pct divides the resize: 0.0002 made a 4x4 model resize each image
    to 20,000 pixels a side (2.6 GB) before cropping."""
    from PIL import Image

    from zoo.weights.files import save_model_files

    model = zoo.create("mlp_relu", in_chans=1, img_size=4, hidden_sizes=[8])
    save_model_files(model, tmp_path / "m", input_size=[1, 4, 4], mean=(0.5,), std=(0.5,))
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["crop_pct"] = 0.0002
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    Image.new("L", (4, 4)).save(tmp_path / "x.png")
    result = invoke("predict", str(tmp_path / "m"), str(tmp_path / "x.png"))
    assert_refused(result, "config.json", "crop_pct 0.0002", "20,000 pixels")


@pytest.mark.parametrize("root", ["/dev/zero", "file"])
def test_a_data_root_that_is_not_a_directory_is_refused(tmp_path: Path, root: str) -> None:
    """Fashion-MNIST found elsewhere (Debian's copy) made `data.root: /dev/zero` train
    silently from another folder than the recipe records."""
    from zoo.data.datasets import build
    from zoo.errors import DataError

    path = Path(root) if root.startswith("/") else tmp_path / root
    if not path.exists():
        path.write_text("not a folder")
    with pytest.raises(DataError, match="is not a directory"):
        build("fashion_mnist", root=path)
