"""zoo.data.imagefolder (and zoo.data.images, zoo.data.streamed): your own images as splits.

Every test writes real image files (PNG, JPEG, BMP; grayscale, RGB, RGBA, palette, 16-bit;
odd sizes; a corrupt file) and decodes them through the same code a training run uses.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from zoo.cli import cli
from zoo.data import imagefolder, images, streamed
from zoo.data.augment import AugmentConfig
from zoo.data.datasets import batches
from zoo.errors import DataError, RecipeError
from zoo.recipe import from_dict

CLASSES = ("ankle_boot", "bag", "coat")


def _write(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)


def _fashion_folder(
    root: Path, per_class: int = 6, splits: tuple[str, ...] = ("train",), seed: int = 0
) -> Path:
    """A Fashion-MNIST-like folder: 28x28 grayscale PNGs whose class sets their brightness."""
    rng = np.random.default_rng(seed)
    for split in splits:
        for label, name in enumerate(CLASSES):
            for i in range(per_class):
                pixels = rng.integers(0, 60, (28, 28)) + 80 * label
                _write(root / split / name / f"{i:03d}.png", pixels.astype(np.uint8))
    return root


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def _build(root: Path, cache: Path, **kwargs: Any) -> Any:
    kwargs = {"in_chans": 1, "img_size": 28, "cache_dir": cache, "workers": 2, **kwargs}
    return imagefolder.build(root, **kwargs)


# -- one image -------------------------------------------------------------------------------


def test_images_are_converted_to_in_chans_like_pil(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    pil = Image.fromarray(rgb)
    cases = {
        "rgb.png": pil,
        "rgba.png": pil.convert("RGBA"),
        "palette.png": pil.convert("P"),
        "grey_alpha.png": pil.convert("LA"),
        "rgb.bmp": pil,  # not a torchvision.io format: decoded by PIL
    }
    for name, img in cases.items():  # (read_image leaves torchvision's warning to its callers)
        img.save(tmp_path / name)
        crop = img.crop((0, 0, 7, 7))
        expected_rgb, expected_grey = np.asarray(crop.convert("RGB")), np.asarray(crop.convert("L"))
        with images.quiet_decoder():
            got, resized = images.read_image(tmp_path / name, 3, 9)  # 9 high, 7 wide: resized
        assert got.shape == (3, 9, 9) and got.dtype == torch.uint8 and resized
        # at the image's own size nothing is resized, so the pixels are PIL's exactly
        own = _read_own_size(tmp_path / name, 3)
        assert torch.equal(own, torch.from_numpy(expected_rgb.copy()).permute(2, 0, 1)), name
        own_grey = _read_own_size(tmp_path / name, 1)
        assert torch.equal(own_grey[0], torch.from_numpy(expected_grey.copy())), name


def _read_own_size(path: Path, in_chans: int) -> torch.Tensor:
    """Decode without resizing: a 9x7 image read at 9x9 is resized, so read a 9x9 crop."""
    with Image.open(path) as img:
        img.crop((0, 0, 7, 7)).save(path.with_name("crop_" + path.name))
    with images.quiet_decoder():
        image, resized = images.read_image(path.with_name("crop_" + path.name), in_chans, 7)
    assert not resized
    return image


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257 * 100, 65535, 30000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    got = images.load_image(tmp_path / "deep.png", 1, 4)
    # PIL's convert("L") clips 16-bit values to 255; zoo scales them to 8 bits
    assert got[0, 0, :].tolist() == [0, 100, 255, round(30000 * 255 / 65535)]
    assert images.load_image(tmp_path / "deep.png", 3, 4).shape == (3, 4, 4)


def test_corrupt_and_huge_images_are_refused_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(DataError, match=r"cannot read image .*bad.png") as info:
        images.load_image(bad, 3, 8)
    assert "\n" not in str(info.value)
    bomb = tmp_path / "bomb.png"  # a header that claims 100000 x 100000 pixels
    header = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + (100_000).to_bytes(4, "big") * 2 + b"\x08\0\0\0\0"
    bomb.write_bytes(header)
    with pytest.raises(DataError, match="pixels is more than"):
        images.load_image(bomb, 3, 8)


# -- a folder --------------------------------------------------------------------------------


def test_fashion_like_folder_holds_out_validation_and_tests_on_it(
    tmp_path: Path, cache: Path
) -> None:
    root = _fashion_folder(tmp_path / "fm", per_class=10)
    data = _build(root, cache, valid_size=6)
    assert data.classes == CLASSES and data.num_classes == 3
    assert (len(data.train), len(data.valid)) == (24, 6)
    assert data.test is data.valid  # no test/: tested on the held-out validation images
    assert data.train.images.shape == (24, 1, 28, 28) and data.train.images.dtype == torch.uint8
    assert any("no test/ folder" in n for n in data.notes)
    assert any("no val/ folder: 6 images" in n for n in data.notes)
    # the brightness encodes the class: labels came from the folder names
    means = data.train.images.float().mean(dim=(1, 2, 3))
    for label in range(3):
        assert ((means[data.train.labels == label] - (30 + 80 * label)).abs() < 10).all()
    # mean/std of the training split only, in [0, 1] units
    train = data.train.images.double() / 255
    torch.testing.assert_close(data.mean[0], float(train.mean()), atol=1e-6, rtol=0)
    torch.testing.assert_close(data.std[0], float(train.std(unbiased=False)), atol=1e-6, rtol=0)


def test_val_and_test_folders_are_used_as_given(tmp_path: Path, cache: Path) -> None:
    root = _fashion_folder(tmp_path / "fm", per_class=4, splits=("train", "val", "test"))
    data = _build(root, cache, mean=(0.5,), std=(0.25,))
    assert (len(data.train), len(data.valid), len(data.test)) == (12, 12, 12)
    assert data.notes == () and (data.mean, data.std) == ((0.5,), (0.25,))
    with pytest.raises(DataError, match=r"remove data.valid_size"):
        _build(root, cache, valid_size=2)
    no_test = _build(root, cache, in_chans=3)
    assert no_test.train.images.shape[1] == 3


def test_mixed_rgb_and_odd_sizes_are_resized_and_said_so(
    tmp_path: Path, cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rng = np.random.default_rng(2)
    root = tmp_path / "mixed"
    for i, (h, w) in enumerate([(32, 32), (17, 45), (32, 32), (64, 3)]):
        _write(root / "train" / "a" / f"{i}.png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        suffix = ".jpg" if i % 2 else ".png"  # grayscale JPEGs and PNGs
        _write(root / "train" / "b" / f"{i}{suffix}", rng.integers(0, 256, (h, w), np.uint8))
    with caplog.at_level(logging.INFO, logger="zoo.data.imagefolder"):
        data = _build(root, cache, in_chans=3, img_size=32, valid_size=2)
    assert data.train.images.shape[1:] == (3, 32, 32)
    assert "resized 4 of 8 images of other sizes to 32x32" in caplog.text


def test_second_build_reads_the_cache_and_decodes_nothing(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _fashion_folder(tmp_path / "fm")
    first = _build(root, cache, valid_size=3)
    [cached] = cache.glob("*.safetensors")

    def fail(*args: Any) -> Any:
        raise AssertionError("decoded an image on a cache hit")

    monkeypatch.setattr(imagefolder, "read_image", fail)
    monkeypatch.setattr(imagefolder, "channel_stats", fail)  # mean/std are cached too
    second = _build(root, cache, valid_size=3)
    assert torch.equal(first.train.images, second.train.images)
    assert torch.equal(first.valid.labels, second.valid.labels)
    assert first.mean == second.mean and first.std == second.std
    # another size, or a changed file, is another cache entry
    with pytest.raises(AssertionError, match="decoded an image"):
        _build(root, cache, img_size=14)
    os.utime(root / "train" / "bag" / "000.png", ns=(1, 1))
    with pytest.raises(AssertionError, match="decoded an image"):
        _build(root, cache, valid_size=3)
    assert cached.is_file()


def test_corrupt_files_are_skipped_and_listed_or_refused(
    tmp_path: Path, cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = _fashion_folder(tmp_path / "fm")
    (root / "train" / "bag" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (root / "train" / "bag" / "README.txt").write_text("not an image")
    (root / "train" / "bag" / ".DS_Store").write_bytes(b"\0")
    with caplog.at_level(logging.INFO, logger="zoo.data.imagefolder"):
        data = _build(root, cache, valid_size=3)
    assert len(data.train) + len(data.valid) == 18  # the corrupt one is not among them
    assert "skipped 1 unreadable image(s): train/bag/broken.png" in caplog.text
    assert "not images" in caplog.text and "train/bag/README.txt" in caplog.text
    for i in range(11):  # past the threshold (10 for a small folder): refused
        (root / "train" / "coat" / f"broken{i}.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"12 of 30 images .* cannot be read"):
        _build(root, cache, valid_size=3)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda r: None, "does not exist"),
        (lambda r: (r / "val" / "a").mkdir(parents=True), "has no train/ folder"),
        (lambda r: (r / "train").mkdir(parents=True), "has no class folders"),
        (lambda r: (r / "train" / "empty").mkdir(parents=True), "no images in .*: empty"),
    ],
)
def test_bad_folders_get_one_line(tmp_path: Path, cache: Path, make: Any, message: str) -> None:
    root = tmp_path / "bad"
    make(root)
    if (root / "train" / "empty").is_dir():
        _fashion_folder(root, per_class=2)
    with pytest.raises(DataError, match=message) as info:
        _build(root, cache)
    assert "\n" not in str(info.value)


def test_val_classes_must_match_train(tmp_path: Path, cache: Path) -> None:
    root = _fashion_folder(tmp_path / "fm", per_class=2, splits=("train", "val"))
    os.rename(root / "val" / "coat", root / "val" / "kaot")
    with pytest.raises(
        DataError, match=r"val has other classes .*missing coat; not in train/: kaot"
    ):
        _build(root, cache)


def test_symlinks_out_of_the_root_are_refused_not_followed(tmp_path: Path, cache: Path) -> None:
    root = _fashion_folder(tmp_path / "fm", per_class=2)
    outside = tmp_path / "secret.png"
    _write(outside, np.zeros((28, 28), dtype=np.uint8))
    inside = root / "train" / "bag" / "000.png"
    (root / "train" / "coat" / "link_in.png").symlink_to(inside)  # inside the root: fine
    assert len(_build(root, cache, valid_size=1).train) == 6
    (root / "train" / "coat" / "link_out.png").symlink_to(outside)
    with pytest.raises(DataError, match=r"point outside it: train/coat/link_out.png"):
        _build(root, cache, valid_size=1)


def test_a_folder_over_the_memory_budget_streams_the_same_batches(
    tmp_path: Path, cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = _fashion_folder(tmp_path / "fm", per_class=5, splits=("train", "test"))
    _write(root / "train" / "bag" / "odd.png", np.full((30, 20), 200, dtype=np.uint8))
    (root / "train" / "coat" / "broken.png").write_bytes(b"nope")
    memory = _build(root, cache, valid_size=4)
    with caplog.at_level(logging.INFO, logger="zoo.data.imagefolder"):
        streaming = _build(root, cache, valid_size=4, budget=1000)
    assert "more than the memory budget" in caplog.text and "streaming" in caplog.text
    assert isinstance(streaming.train, streamed.StreamedSplit)
    assert [len(s) for s in (streaming.train, streaming.valid, streaming.test)] == [12, 4, 15]
    torch.testing.assert_close(streaming.mean, memory.mean)
    torch.testing.assert_close(streaming.std, memory.std)
    augment = AugmentConfig(hflip=True, crop_scale=(0.5, 1.0))
    settings: dict[str, Any] = {"mean": memory.mean, "std": memory.std, "augment": augment}
    pairs = zip(
        batches(memory.train, 5, shuffle=True, generator=_gen(3), **settings),
        batches(streaming.train, 5, shuffle=True, generator=_gen(3), **settings),
        strict=True,
    )
    for (x, y), (xs, ys) in pairs:
        torch.testing.assert_close(xs, x)
        assert torch.equal(ys, y)
    plain: dict[str, Any] = {"shuffle": False, "generator": None, "augment": None}
    plain.update(mean=(0.0,), std=(1.0,))
    [(x, y)] = batches(streaming.test.part(2, 7), 8, **plain)  # a rank's share of an evaluation
    [(xm, ym)] = batches(memory.test.part(2, 7), 8, **plain)
    torch.testing.assert_close(x, xm)
    assert torch.equal(y, ym)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_memory_budget_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(imagefolder.MEMORY_ENV, "512M")
    assert imagefolder.memory_budget() == 512 << 20
    monkeypatch.setenv(imagefolder.MEMORY_ENV, "2GiB")
    assert imagefolder.memory_budget() == 2 << 30
    monkeypatch.setenv(imagefolder.MEMORY_ENV, "lots")
    with pytest.raises(DataError, match="not a size"):
        imagefolder.memory_budget()
    monkeypatch.delenv(imagefolder.MEMORY_ENV)
    assert 0 < imagefolder.memory_budget() <= 8 << 30


# -- recipes and the trainer -----------------------------------------------------------------


def _recipe(root: Path | None, **data: Any) -> dict[str, Any]:
    spec = {"dataset": "imagefolder", "batch_size": 8, **data}
    if root is not None:
        spec["root"] = str(root)
    return {
        "name": "own",
        "model": {"name": "mlp_relu", "args": {"in_chans": 1, "hidden_sizes": [16]}},
        "data": spec,
        "epochs": 1,
        "device": "cpu",
    }


def test_recipe_checks_for_imagefolder(tmp_path: Path) -> None:
    recipe = from_dict(_recipe(tmp_path, img_size=28))
    assert recipe.data.img_size == 28
    with pytest.raises(RecipeError, match=r"data.root: is required for dataset imagefolder"):
        from_dict(_recipe(None))
    with pytest.raises(RecipeError, match=r"data.img_size: is set for dataset 'cifar10'"):
        from_dict({**_recipe(None), "data": {"dataset": "cifar10", "img_size": 28}})
    with pytest.raises(RecipeError, match=r"data.img_size"):
        from_dict(_recipe(tmp_path, img_size=0))
    bad = _recipe(tmp_path, img_size=28)
    bad["model"]["args"] = {"in_chans": 4}
    with pytest.raises(RecipeError, match=r"model.args.in_chans"):
        from_dict(bad)
    bad["model"]["args"] = {"img_size": 32}
    with pytest.raises(RecipeError, match=r"model.args.img_size: 32 != data.img_size 28"):
        from_dict(bad)


def test_cli_trains_on_a_folder_and_exports_its_class_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZOO_DATA", str(tmp_path / "data"))
    root = _fashion_folder(tmp_path / "fm", per_class=6)
    recipe = tmp_path / "own.yaml"
    recipe.write_text(json.dumps(_recipe(root, img_size=28, valid_size=6)))
    runner = CliRunner()
    dry = runner.invoke(cli, ["train", str(recipe), "--dry-run", "--out", str(tmp_path / "x")])
    assert dry.exit_code == 0, dry.output
    assert "on imagefolder 1x28x28 (train 12, valid 6, test 6)" in dry.output
    out = tmp_path / "run"
    result = runner.invoke(cli, ["train", str(recipe), "--out", str(out)])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert list(config["label_names"]) == list(CLASSES)
    summary = json.loads((out / "summary.json").read_text())
    assert any("no test/ folder" in n for n in summary["data_notes"])
    assert summary["dataset"] == "imagefolder"
    assert list((tmp_path / "data" / imagefolder.CACHE_DIR).glob("*.safetensors"))


@pytest.mark.slow
def test_training_streams_a_folder_over_the_memory_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from zoo.training.loop import RunOptions, fit

    monkeypatch.setenv("ZOO_DATA", str(tmp_path / "data"))
    monkeypatch.setenv(imagefolder.MEMORY_ENV, "1K")
    root = _fashion_folder(tmp_path / "fm", per_class=6, splits=("train", "test"))
    recipe = from_dict(_recipe(root, img_size=28, valid_size=6))
    run = fit(recipe, RunOptions(out_dir=tmp_path / "run"))
    summary = json.loads((run / "summary.json").read_text())
    assert any("streamed from disk" in n for n in summary["data_notes"])
    assert 0.0 <= summary["test_acc"] <= 1.0


def test_a_split_folder_linked_out_of_the_root_is_refused(tmp_path: Path, cache: Path) -> None:
    root = _fashion_folder(tmp_path / "fm", per_class=2)
    elsewhere = _fashion_folder(tmp_path / "elsewhere", per_class=2, splits=("test",))
    (root / "test").symlink_to(elsewhere / "test")
    with pytest.raises(DataError, match=r"point outside it: test;"):
        _build(root, cache, valid_size=1)


# -- decoding in processes ---------------------------------------------------------------------


@pytest.fixture
def many(tmp_path: Path) -> list[str]:
    """~3 chunks of files, one missing and one corrupt among them."""
    root = _fashion_folder(tmp_path / "many", per_class=200)
    paths = sorted(str(p) for p in root.rglob("*.png"))
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nxx")
    return [*paths[:10], str(tmp_path / "gone.png"), *paths[10:300], str(tmp_path / "bad.png"),
            *paths[300:]]  # fmt: skip


def test_processes_decode_exactly_what_one_thread_decodes(
    many: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    one = imagefolder._decode_parallel(many, 1, 28, 1)
    monkeypatch.setattr(imagefolder, "_MIN_CHUNKS_FOR_PROCESSES", 2)
    calls: list[int] = []
    real = imagefolder._in_processes
    monkeypatch.setattr(imagefolder, "_in_processes", lambda *a: calls.append(1) or real(*a))
    forked = imagefolder._decode_parallel(many, 1, 28, 2)
    assert calls == [1]  # the processes did the work
    assert torch.equal(forked[0], one[0]) and torch.equal(forked[1], one[1])
    assert forked[2:] == one[2:] and sorted(one[3]) == [10, 301]


def test_a_decoding_process_that_dies_is_one_line_not_a_hang(
    many: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An image that crashed the decoder killed a worker process: the pool notices and the
    error names the files of that chunk (a multiprocessing.Pool would wait for ever)."""
    monkeypatch.setattr(imagefolder, "_MIN_CHUNKS_FOR_PROCESSES", 2)
    real = imagefolder._DecodeJob.__call__

    def crash(self: Any, start: int) -> Any:
        if start == imagefolder._CHUNK:
            os.kill(os.getpid(), 9)
        return real(self, start)

    monkeypatch.setattr(imagefolder._DecodeJob, "__call__", crash)
    with pytest.raises(DataError, match=r"decoding process died while reading .*\.png \.\.\. "):
        imagefolder._decode_parallel(many, 1, 28, 2)
