"""zoo.data.transforms: a model's data config and the inference preprocessing of one image."""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import timm.data
import torch
from PIL import Image

import zoo
from zoo.data.datasets import batches, build
from zoo.data.images import UnreadableImage
from zoo.data.transforms import (
    DATA_CONFIG_KEYS,
    create_transform,
    read_pixels,
    resolve_data_config,
    trained_preprocessing,
)
from zoo.errors import DataError, WeightsError
from zoo.weights.files import save_model_files

RNG = np.random.default_rng(0)
CFG = {
    "input_size": (3, 32, 32),
    "interpolation": "bilinear",
    "mean": (0.5, 0.4, 0.3),
    "std": (0.2, 0.25, 0.3),
    "crop_pct": 1.0,
    "crop_mode": "center",
}
TINY_MLP = {"in_chans": 1, "img_size": 28, "hidden_sizes": [16]}


def _png(array: np.ndarray, path: Path | None = None, mode: str | None = None) -> bytes:
    out = io.BytesIO()
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(out, format="PNG")
    if path is not None:
        path.write_bytes(out.getvalue())
    return out.getvalue()


# -- the data config ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("mlp_relu", TINY_MLP), ("resnet18", {}), ("mlpmixer_p4", {"num_blocks": 1})],
)
def test_resolve_data_config_equals_timms(name: str, kwargs: dict) -> None:
    model = zoo.create(name, **kwargs)
    ours = zoo.resolve_data_config(model)
    assert ours == timm.data.resolve_data_config({}, model=model)
    assert set(ours) == set(DATA_CONFIG_KEYS)
    size = kwargs.get("img_size", 32)
    assert ours["input_size"] == (kwargs.get("in_chans", 3), size, size)


def test_loaded_weights_carry_the_values_they_were_trained_with(tmp_path: Path) -> None:
    model = zoo.create("mlp_relu", **TINY_MLP)
    names = [f"c{i}" for i in range(10)]
    save_model_files(
        model,
        tmp_path,
        input_size=[1, 28, 28],
        mean=[0.2860415],
        std=[0.3530],
        label_names=names,
        data_cfg={"crop_mode": "squash"},
    )
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["interpolation"], config["crop_pct"], config["crop_mode"]) == (
        "bilinear",
        1.0,
        "squash",
    )
    loaded = zoo.create(str(tmp_path))
    expected = {
        "input_size": (1, 28, 28),
        "interpolation": "bilinear",
        "mean": (0.2860415,),
        "std": (0.3530,),
        "crop_pct": 1.0,
        "crop_mode": "squash",
    }
    assert zoo.resolve_data_config(loaded) == expected
    assert timm.data.resolve_data_config({}, model=loaded) == expected
    assert loaded.pretrained_cfg["label_names"] == tuple(names)
    assert loaded.pretrained_cfg["num_classes"] == 10
    assert loaded.default_cfg is loaded.pretrained_cfg
    assert model.pretrained_cfg["mean"] != (0.2860415,)  # the builder's defaults are untouched


def test_old_export_without_mean_std_falls_back_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    save_model_files(
        zoo.create("mlp_relu", **TINY_MLP), tmp_path, input_size=[1, 28, 28], mean=[0.1], std=[1]
    )
    config = json.loads((tmp_path / "config.json").read_text())
    for key in ("mean", "std", "interpolation", "crop_pct", "crop_mode"):
        del config[key]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING, logger="zoo.weights.files"):
        loaded = zoo.create(str(tmp_path))
    cfg = zoo.resolve_data_config(loaded)
    assert (cfg["mean"], cfg["std"]) == ((0.286,), (0.353,))  # Fashion-MNIST's, by geometry
    assert cfg["crop_pct"] == 1.0  # the builder's default
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "records no mean/std" in warnings[0]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("mean", [0.1, 0.2], "mean has 2 values for 1 input channel"),
        ("std", [0.0], "std must be positive"),
        ("crop_pct", 7, "crop_pct must be a number in"),
        ("interpolation", "lanczos", "interpolation 'lanczos' is not supported"),
        ("input_size", [1, -28, 28], "input_size must be"),
        ("label_names", ["a", "b"], "label_names must be a list of 10 class names"),
    ],
)
def test_unusable_values_in_config_json_are_refused(
    tmp_path: Path, key: str, value: object, message: str
) -> None:
    save_model_files(
        zoo.create("mlp_relu", **TINY_MLP), tmp_path, input_size=[1, 28, 28], mean=[0], std=[1]
    )
    config = json.loads((tmp_path / "config.json").read_text())
    config[key] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError, match=message):
        zoo.create(str(tmp_path))


def test_overrides_win_and_unknown_keys_are_refused() -> None:
    cfg = resolve_data_config(CFG, crop_pct=0.875, mean=(0.5,), std=None)
    assert cfg["crop_pct"] == 0.875 and cfg["mean"] == (0.5, 0.5, 0.5)  # one value: per channel
    assert cfg["std"] == CFG["std"]
    with pytest.raises(DataError, match=r"unknown data config key 'crop_ptc'.*crop_pct"):
        resolve_data_config(CFG, crop_ptc=1.0)


def test_a_model_without_a_config_gets_timms_defaults() -> None:
    assert resolve_data_config(torch.nn.Linear(2, 2)) == timm.data.resolve_data_config(
        {}, model=torch.nn.Linear(2, 2)
    )


def test_timm_create_transform_takes_zoos_config() -> None:
    model = zoo.create("mlp_relu", **TINY_MLP)
    theirs = timm.data.create_transform(**zoo.resolve_data_config(model))
    image = Image.fromarray(RNG.integers(0, 256, (41, 30), dtype=np.uint8))
    ours = zoo.create_transform(model)(image)
    assert theirs(image).shape == ours.shape == (1, 28, 28)
    one_level = 1 / 255 / model.pretrained_cfg["std"][0]  # PIL and torch resize round apart
    torch.testing.assert_close(ours, theirs(image), atol=one_level * 1.01, rtol=0)


def test_trained_preprocessing() -> None:
    assert trained_preprocessing("cifar10")["crop_pct"] == 1.0
    assert trained_preprocessing("imagefolder")["crop_mode"] == "squash"


# -- the transform --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["center", "squash", "border"])
@pytest.mark.parametrize("crop_pct", [1.0, 0.875])
@pytest.mark.parametrize("shape", [(17, 13), (40, 64), (28, 28)])
def test_resize_and_crop_match_timms_eval_transform(
    mode: str, crop_pct: float, shape: tuple[int, int]
) -> None:
    cfg = {**CFG, "crop_mode": mode, "crop_pct": crop_pct}
    image = Image.fromarray(RNG.integers(0, 256, (*shape, 3), dtype=np.uint8))
    ours = create_transform(cfg)(image)
    theirs = timm.data.create_transform(**cfg)(image)
    assert ours.shape == theirs.shape == (3, 32, 32)
    # at most one grey level apart (PIL and torch round resized pixels differently)
    one_level = torch.tensor([1 / 255 / s for s in CFG["std"]]).view(3, 1, 1) * 1.01
    assert bool(((ours - theirs).abs() <= one_level).all())


@pytest.mark.parametrize("mode", ["center", "squash", "border"])
def test_extreme_aspect_ratios_still_give_the_input_size(mode: str) -> None:
    line = torch.from_numpy(RNG.integers(0, 256, (3, 1, 300), dtype=np.uint8))
    assert create_transform({**CFG, "crop_mode": mode})(line).shape == (3, 32, 32)


def test_an_image_of_the_input_size_is_not_resampled() -> None:
    pixels = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    out = create_transform(CFG).pixels(_png(pixels))
    assert torch.equal(out, torch.from_numpy(pixels).permute(2, 0, 1))


def test_path_bytes_pil_and_tensor_inputs_agree(tmp_path: Path) -> None:
    pixels = RNG.integers(0, 256, (19, 23, 3), dtype=np.uint8)
    data = _png(pixels, tmp_path / "x.png")
    transform = create_transform(CFG)
    from_path = transform(tmp_path / "x.png")
    assert from_path.dtype == torch.float32 and from_path.shape == (3, 32, 32)
    assert torch.equal(from_path, transform(str(tmp_path / "x.png")))
    assert torch.equal(from_path, transform(data))
    assert torch.equal(from_path, transform(Image.open(io.BytesIO(data))))
    assert torch.equal(from_path, transform(torch.from_numpy(pixels).permute(2, 0, 1)))


def test_modes_are_converted_to_in_chans() -> None:
    rgb = RNG.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    grey_of_rgb = np.asarray(Image.fromarray(rgb).convert("L"))
    assert torch.equal(read_pixels(_png(rgb), 1)[0], torch.from_numpy(grey_of_rgb))  # PIL's L
    rgba = np.concatenate([rgb, RNG.integers(0, 256, (9, 7, 1), dtype=np.uint8)], axis=2)
    assert torch.equal(read_pixels(_png(rgba), 3), read_pixels(_png(rgb), 3))  # alpha dropped
    grey = rgb[..., 0]
    assert torch.equal(read_pixels(_png(grey), 3), torch.from_numpy(grey).expand(3, -1, -1))
    palette = _png(rgb, mode="P")
    expected = np.asarray(Image.open(io.BytesIO(palette)).convert("RGB"))
    assert torch.equal(read_pixels(palette, 3), torch.from_numpy(expected).permute(2, 0, 1))


def test_16_bit_images_are_scaled_to_8_bits() -> None:
    wide = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    assert read_pixels(_png(wide), 1).tolist() == [[[0, 1, 128, 255]]]
    assert read_pixels(Image.open(io.BytesIO(_png(wide))), 1).tolist() == [[[0, 1, 128, 255]]]


def test_bmp_goes_through_pil() -> None:
    pixels = RNG.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="BMP")
    assert torch.equal(read_pixels(out.getvalue(), 3), torch.from_numpy(pixels).permute(2, 0, 1))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"hello, not an image", "not an image"),
        (b"\xff\xd8\xff\xe0garbage" * 3, "corrupt"),
    ],
)
def test_unreadable_bytes_say_why(data: bytes, reason: str) -> None:
    with pytest.raises(UnreadableImage, match=reason):
        read_pixels(data, 3)


def test_files_that_are_not_regular_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UnreadableImage, match="not a regular file"):
        read_pixels(tmp_path, 3)
    os.mkfifo(tmp_path / "pipe.png")  # opening it must not block
    with pytest.raises(UnreadableImage, match="not a regular file"):
        read_pixels(tmp_path / "pipe.png", 3)
    with pytest.raises(UnreadableImage, match="No such file"):
        read_pixels(tmp_path / "missing.png", 3)


def test_matches_the_trainers_evaluation_exactly(tmp_path: Path) -> None:
    """A 28x28 grey image: zoo predict's input tensor IS the trainer's, bit for bit."""
    data = build("synthetic", synthetic={"in_chans": 1, "img_size": 28, "test_size": 16})
    mean, std = (0.2860415,), (0.3530242,)
    transform = create_transform({**CFG, "input_size": (1, 28, 28), "mean": mean, "std": std})
    for i, image in enumerate(data.test.images):
        _png(image[0].numpy(), tmp_path / f"{i}.png")
    pixels = torch.stack([transform.pixels(tmp_path / f"{i}.png") for i in range(16)])
    assert torch.equal(pixels, data.test.images)
    (trainer, _), *_ = batches(
        data.test, 16, shuffle=False, generator=None, augment=None, mean=mean, std=std
    )
    assert torch.equal(transform.normalise(pixels), trainer)
    assert torch.equal(transform(tmp_path / "3.png"), trainer[3])
