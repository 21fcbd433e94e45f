"""A model's data config, and the inference preprocessing of one image that follows from it.

The data config is timm's: ``input_size`` (C, H, W), ``interpolation``, ``mean``, ``std``,
``crop_pct`` and ``crop_mode``, read from ``model.pretrained_cfg`` (builders set defaults for
the dataset they were designed for; weights loaded from a run, export, tag or Hub repo carry
the values they were trained with). :func:`resolve_data_config` returns what
``timm.data.resolve_data_config({}, model=m)`` returns, so the two agree, and its result can be
handed to ``timm.data.create_transform(**cfg)``.

:func:`create_transform` gives :class:`ImageTransform`, the preprocessing of ``zoo predict``:

1. decode (a file through torchvision.io; PIL for BMP/TIFF/PPM; or a PIL image) to uint8 with
   ``in_chans`` channels as :mod:`zoo.data.images` does for training on image folders: RGB to
   grey with PIL's "L" weights exactly (JPEG: libjpeg's grey), alpha dropped, palettes
   expanded, 16-bit samples scaled to 8 bits (rounded). PNGs are checked by
   :mod:`zoo.data.png` first: torchvision's decoder crashes the process on corrupt ones;
2. resize and crop as timm's eval transform does: ``center`` resizes the shorter side to
   ``size / crop_pct`` and crops the centre, ``squash`` resizes both sides to ``size / crop_pct``
   and crops the centre, ``border`` fits the longer side and pads with the mean colour;
   antialiased, on the uint8 pixels; an image that already has the size is not touched;
3. normalise with :func:`zoo.data.datasets.normalise`, the very operation the trainer
   applies to its uint8 batches, so a 28x28 Fashion-MNIST image gives bit-identical input
   tensors (and logits) in ``zoo predict`` and in the trainer's evaluation.

Steps 1-2 (:meth:`ImageTransform.pixels`) and step 3 (:meth:`ImageTransform.normalise`) are
separate so that DataLoader workers can decode and hand over uint8 pixels (a quarter of the
bytes of float32) and the whole batch is normalised at once.
"""

from __future__ import annotations

import functools
import io
import math
import os
import stat
import struct
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch

from zoo.data.images import MAX_FILE_BYTES, MAX_PIXELS, UnreadableImage
from zoo.data.png import png_problem
from zoo.errors import DataError, did_you_mean

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "CROP_MODES",
    "DATA_CONFIG_KEYS",
    "INTERPOLATIONS",
    "TIMM_DEFAULTS",
    "ImageTransform",
    "create_transform",
    "read_pixels",
    "resolve_data_config",
    "trained_preprocessing",
]

DATA_CONFIG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
CROP_MODES = ("center", "squash", "border")
# What timm.data.resolve_data_config assumes when a model says nothing (ImageNet's values).
TIMM_DEFAULTS: dict[str, Any] = {
    "input_size": (3, 224, 224),
    "interpolation": "bicubic",
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "crop_pct": 0.875,
    "crop_mode": "center",
}
_MAX_SIDE = 1 << 14
_PNG = b"\x89PNG\r\n\x1a\n"
_UNCHANGED, _GRAY, _RGB = 0, 1, 3  # torchvision.io.ImageReadMode values
_PIL_16BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


# -- the data config ------------------------------------------------------------------------


def resolve_data_config(model_or_cfg: Any = None, **overrides: Any) -> dict[str, Any]:
    """The data config (timm's keys: input_size, interpolation, mean, std, crop_pct,
    crop_mode) of a model (its ``pretrained_cfg``) or of a config mapping; ``overrides``
    (None: keep) win. What neither says gets timm's defaults, as timm does, so the result
    equals ``timm.data.resolve_data_config({}, model=model)``. Raises :class:`DataError` for
    unknown keys and for values that cannot be used."""
    unknown = sorted(set(overrides) - set(DATA_CONFIG_KEYS))
    if unknown:
        raise DataError(
            f"unknown data config key {unknown[0]!r}; the keys are {', '.join(DATA_CONFIG_KEYS)}."
            + did_you_mean(unknown[0], DATA_CONFIG_KEYS)
        )
    if isinstance(model_or_cfg, Mapping):
        given: Mapping[str, Any] = model_or_cfg
    else:
        given = getattr(model_or_cfg, "pretrained_cfg", None) or {}
    cfg: dict[str, Any] = {}
    for key in DATA_CONFIG_KEYS:
        value = overrides.get(key)
        if value is None:
            value = given.get(key)
        # timm takes input_size when it is not None and the others when they are truthy
        if value is None or (key != "input_size" and not value):
            value = TIMM_DEFAULTS[key]
        cfg[key] = tuple(value) if isinstance(value, list) else value
    return _checked(cfg)


def _checked(cfg: dict[str, Any]) -> dict[str, Any]:
    size = cfg["input_size"]
    if (
        not isinstance(size, tuple)
        or len(size) != 3
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in size)
        or not all(1 <= v <= _MAX_SIDE for v in size)
    ):
        raise DataError(
            f"input_size must be (channels, height, width) of positive integers up to "
            f"{_MAX_SIDE}, got {size!r}"
        )
    chans = size[0]
    for key, positive in (("mean", False), ("std", True)):
        values = cfg[key]
        if isinstance(values, (int, float)) and not isinstance(values, bool):
            values = (values,)
        if not isinstance(values, tuple) or not all(_finite(v) for v in values):
            raise DataError(f"{key} must be a list of numbers, got {values!r}")
        if len(values) == 1 and chans > 1:
            values = values * chans  # as timm does for a single value
        if len(values) != chans:
            raise DataError(
                f"{key} has {len(values)} values for {chans} input channel(s): {values!r}"
            )
        if positive and min(values) <= 0:
            raise DataError(f"std must be positive, got {values!r}")
        cfg[key] = values
    if not _finite(cfg["crop_pct"]) or not 0 < cfg["crop_pct"] <= 1:
        raise DataError(f"crop_pct must be a number in (0, 1], got {cfg['crop_pct']!r}")
    # images are resized to input_size / crop_pct before the crop: bound that as well
    if max(size[1:]) / cfg["crop_pct"] > _MAX_SIDE:
        raise DataError(
            f"crop_pct {cfg['crop_pct']!r} would resize images to "
            f"{max(size[1:]) / cfg['crop_pct']:,.0f} pixels a side before cropping them to "
            f"{size[1]}x{size[2]}; at most {_MAX_SIDE} is allowed"
        )
    for key, choices in (("interpolation", INTERPOLATIONS), ("crop_mode", CROP_MODES)):
        if cfg[key] not in choices:
            raise DataError(
                f"{key} {cfg[key]!r} is not supported; choose one of {', '.join(choices)}"
            )
    return cfg


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def trained_preprocessing(dataset: str) -> dict[str, Any]:
    """How the trainer brings images of ``dataset`` to the input size, in timm's keys, for
    config.json: the built-in datasets are stored at it, so nothing is resized or cropped
    (crop_pct 1); imagefolder images are resized to it without keeping the aspect ratio
    (:mod:`zoo.data.images`), which is ``squash``."""
    mode = "squash" if dataset == "imagefolder" else "center"
    return {"interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": mode}


# -- the transform --------------------------------------------------------------------------


def create_transform(model_or_cfg: Any = None, **overrides: Any) -> ImageTransform:
    """The inference preprocessing of one image for a model (or a data config mapping):
    ``transform(image)`` takes a file path, encoded bytes, a PIL image or a uint8 (C, H, W)
    tensor and returns the normalised float32 (C, H, W) tensor the model expects.
    ``overrides`` change the data config (see :func:`resolve_data_config`)."""
    return ImageTransform(**resolve_data_config(model_or_cfg, **overrides))


@dataclass(frozen=True)
class ImageTransform:
    """Decode, convert, resize/crop and normalise one image (picklable, for DataLoader
    workers). Build it with :func:`create_transform`."""

    input_size: tuple[int, int, int]
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float
    crop_mode: str

    def __call__(self, image: Any) -> torch.Tensor:
        """Normalised float32 (C, H, W) of a path, bytes, PIL image or uint8 tensor."""
        return self.normalise(self.pixels(image).unsqueeze(0))[0]

    def pixels(self, image: Any) -> torch.Tensor:
        """uint8 (C, H, W) of the input size: steps 1 and 2 (decode, resize and crop).
        Raises :class:`~zoo.data.images.UnreadableImage` for a file that is no image."""
        return self.resize_crop(read_pixels(image, self.input_size[0]))

    def normalise(self, batch: torch.Tensor) -> torch.Tensor:
        """(batch / 255 - mean) / std of uint8 (N, C, H, W): the trainer's own operation."""
        from zoo.data.datasets import normalise

        return normalise(batch, self.mean, self.std)

    def resize_crop(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 (C, H, W) of any size -> the input size, as timm's eval transform does."""
        _, height, width = self.input_size
        target = (height, width)
        scaled = (math.floor(height / self.crop_pct), math.floor(width / self.crop_pct))
        h, w = image.shape[1:]
        fill: int | list[int] = 0
        if self.crop_mode == "squash":
            size = scaled
        elif self.crop_mode == "border":  # the longer side fits, the rest is mean colour
            ratio = max(h / scaled[0], w / scaled[1])
            size = (max(1, round(h / ratio)), max(1, round(w / ratio)))
            fill = [round(255 * v) for v in self.mean]
        elif scaled[0] == scaled[1]:  # torchvision's Resize(int): the shorter side
            short, long = (h, w) if h <= w else (w, h)
            other = int(scaled[0] * long / short)
            size = (scaled[0], other) if h <= w else (other, scaled[0])
        else:  # timm's ResizeKeepRatio: the side that needs the least scaling fits
            ratio = min(h / scaled[0], w / scaled[1])
            size = (max(1, round(h / ratio)), max(1, round(w / ratio)))
        if size != (h, w):
            image = _resize(image, size, self.interpolation)
        return _center_crop_or_pad(image, target, fill)

    def data_config(self) -> dict[str, Any]:
        """The data config this transform applies (timm's keys)."""
        return asdict(self)


def _resize(image: torch.Tensor, size: tuple[int, int], interpolation: str) -> torch.Tensor:
    """torchvision's ``resize(antialias=True)`` of uint8 pixels, without importing
    torchvision.transforms (as :mod:`zoo.data.images` resizes)."""
    import torch.nn.functional as F

    if interpolation == "nearest":
        return F.interpolate(image[None], size, mode="nearest")[0]
    return F.interpolate(image[None], size, mode=interpolation, antialias=True)[0]


def _center_crop_or_pad(image: torch.Tensor, size: tuple[int, int], fill: Any) -> torch.Tensor:
    """torchvision's ``center_crop`` (timm's ``center_crop_or_pad`` with ``fill``)."""
    height, width = size
    h, w = image.shape[1:]
    if (h, w) == (height, width):
        return image
    if height > h or width > w:
        top, left = max(height - h, 0) // 2, max(width - w, 0) // 2
        padded = torch.empty((image.shape[0], max(h, height), max(w, width)), dtype=image.dtype)
        padded[:] = torch.tensor(fill, dtype=image.dtype).view(-1, 1, 1)
        padded[:, top : top + h, left : left + w] = image
        image, h, w = padded, padded.shape[1], padded.shape[2]
    top, left = round((h - height) / 2.0), round((w - width) / 2.0)
    return image[:, top : top + height, left : left + width].contiguous()


# -- decoding -------------------------------------------------------------------------------


def read_pixels(image: Any, in_chans: int) -> torch.Tensor:
    """uint8 (in_chans, H, W) pixels of a file path, encoded bytes, PIL image or uint8
    (C, H, W) tensor, at the image's own size. Raises
    :class:`~zoo.data.images.UnreadableImage` (the reason only) for a file that is not a
    readable image."""
    if isinstance(image, (str, os.PathLike)):
        image = _read_file(os.fspath(image))
    if isinstance(image, (bytes, bytearray, memoryview)):
        pixels = _decode(image if isinstance(image, bytearray) else bytearray(image), in_chans)
    elif isinstance(image, torch.Tensor):
        if image.dtype not in (torch.uint8, torch.uint16) or image.ndim != 3:
            raise DataError(
                f"an image tensor must be uint8 (C, H, W), got {image.dtype} {tuple(image.shape)}"
            )
        pixels = image
    elif hasattr(image, "getbands"):
        pixels = _from_pil(image)
    else:
        raise DataError(
            f"cannot read an image from a {type(image).__name__}; give a file path, bytes, "
            "a PIL image or a uint8 (C, H, W) tensor"
        )
    return _to_chans(_to_uint8(pixels), in_chans)


def _read_file(path: str | bytes) -> bytearray:
    try:
        # O_NONBLOCK: opening a FIFO must not block; it is refused below as not a file
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise UnreadableImage(e.strerror or str(e)) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnreadableImage("not a regular file")
        if info.st_size > MAX_FILE_BYTES:
            raise UnreadableImage(f"larger than {MAX_FILE_BYTES >> 20} MiB")
        data = bytearray(info.st_size)
        done = os.readv(fd, [data])
        while done < len(data):  # a short read: rare, but allowed for regular files
            step = os.readv(fd, [memoryview(data)[done:]])
            if not step:
                del data[done:]  # the file shrank while it was read
                break
            done += step
        return data
    except OSError as e:
        raise UnreadableImage(e.strerror or str(e)) from None
    finally:
        os.close(fd)


def _decode(data: bytearray, in_chans: int) -> torch.Tensor:
    """uint8 or uint16 (C, H, W) as stored (palettes expanded to RGB). ``data`` becomes the
    decoder's input tensor without a copy."""
    if not data:
        raise UnreadableImage("empty file (0 bytes)")
    png, jpeg = data.startswith(_PNG), data[:2] == b"\xff\xd8"
    problem = png_problem(data, MAX_PIXELS) if png else _jpeg_problem(data)
    if problem is not None:
        raise UnreadableImage(problem)
    mode = _UNCHANGED
    if jpeg:  # a CMYK JPEG would come out as 4 channels; grey as zoo.data.images decodes it
        mode = _GRAY if in_chans == 1 else _RGB
    elif png and len(data) > 25 and data[25] == 3:
        mode = _RGB  # palette indices are not pixels
    try:
        pixels = _decoder(png)(torch.frombuffer(data, dtype=torch.uint8), mode)
    except RuntimeError as e:
        if png or jpeg or data[:4] in (b"GIF8", b"RIFF"):  # formats torchvision.io decodes
            raise UnreadableImage(f"corrupt ({_last_line(e)})") from None
        return _from_pil_bytes(data)  # BMP, TIFF, PPM/PGM, or not an image at all
    return pixels[0] if pixels.ndim == 4 else pixels  # an animated GIF: its first frame


@functools.cache
def _decoder(png: bool) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """torchvision.io's decode_png / decode_image operator, called directly: the public
    wrappers log API usage and warn (deprecation) on every call, which costs more than
    decoding a small PNG."""
    from torchvision.io import ImageReadMode, decode_image, decode_png  # loads the operators

    op = getattr(getattr(torch.ops, "image", None), "decode_png" if png else "decode_image", None)
    if op is not None:
        return lambda data, mode: op(data, mode, False)
    public = decode_png if png else decode_image
    return lambda data, mode: public(data, mode=ImageReadMode(mode))


def _jpeg_problem(data: bytes | bytearray) -> str | None:
    """A JPEG that claims more than MAX_PIXELS pixels (a decompression bomb), else None."""
    i = 2
    while data[:2] == b"\xff\xd8" and i + 9 < len(data) and data[i] == 0xFF:
        marker, length = data[i + 1], int.from_bytes(data[i + 2 : i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            if width * height > MAX_PIXELS:
                return f"{width}x{height} pixels is more than {MAX_PIXELS:,}"
            return None
        i += 2 + length
    return None


def _last_line(error: Exception) -> str:
    """torchvision's messages start with a C++ source location; keep the reason."""
    text = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
    return text.rsplit(", ", 1)[-1] if "/csrc/" in text else text


def _from_pil_bytes(data: bytes | bytearray) -> torch.Tensor:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return _from_pil(img)
    except Image.UnidentifiedImageError:
        raise UnreadableImage("not an image (or a format zoo cannot read)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise UnreadableImage(f"corrupt ({type(e).__name__}: {e})") from None


def _from_pil(img: Image.Image) -> torch.Tensor:
    import numpy as np

    if img.mode in _PIL_16BIT:
        array = np.asarray(img, dtype=np.int64).clip(0, 65535).astype(np.uint16)
    elif img.mode in ("1", "L", "LA", "RGB", "RGBA"):
        array = np.asarray(img.convert("L") if img.mode == "1" else img)
    else:  # palettes, CMYK, YCbCr, floats, ...
        array = np.asarray(img.convert("RGBA" if "A" in img.getbands() else "RGB"))
    tensor = torch.from_numpy(array.copy())
    return tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1).contiguous()


def _to_uint8(image: torch.Tensor) -> torch.Tensor:
    if image.dtype == torch.uint8:
        return image
    return ((image.to(torch.int32) * 255 + 32767) // 65535).to(torch.uint8)  # 16 bits, rounded


def _to_chans(image: torch.Tensor, in_chans: int) -> torch.Tensor:
    """1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA) channels -> ``in_chans`` (1 or 3;
    another count must be what the image has). Alpha is dropped, as PIL's convert does; RGB
    to grey uses PIL's "L" weights, exactly."""
    channels = image.shape[0]
    if channels == in_chans and channels in (1, 3):
        return image
    if in_chans not in (1, 3):
        if channels != in_chans:
            raise UnreadableImage(f"has {channels} channels, the model takes {in_chans}")
        return image
    colour = image[:3] if channels >= 3 else image[:1]
    if in_chans == 3:
        return colour if colour.shape[0] == 3 else colour.expand(3, -1, -1).contiguous()
    if colour.shape[0] == 1:
        return colour
    r, g, b = colour.to(torch.int32).unbind(0)
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).to(torch.uint8).unsqueeze(0)
