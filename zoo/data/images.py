"""One image file -> uint8 (C, H, W) pixels, converted and resized the way zoo trains on it.

:func:`load_image` converts to ``in_chans`` (1: grayscale with PIL's "L" weights, exactly;
3: RGB; alpha is dropped, palettes are expanded, 16-bit samples are scaled to 8 bits) and
resizes to ``img_size`` x ``img_size`` (antialiased bilinear, aspect ratio not kept, like
torchvision's ``Resize((size, size))``). :mod:`zoo.data.imagefolder` decodes folders with it
and ``zoo predict`` single images, so training and prediction see the same pixels.

torchvision.io decodes PNG, JPEG, GIF and WebP (its operator is called directly: the public
wrapper warns on every call); PIL decodes the rest (BMP, TIFF, PPM/PGM). PNG and JPEG
headers are checked before decoding, so a small file claiming a huge image (a decompression
bomb) is refused.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import stat
import struct
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from zoo.data.png import png_problem
from zoo.errors import DataError

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_FILE_BYTES",
    "MAX_PIXELS",
    "UnreadableImage",
    "decode_image_bytes",
    "load_image",
    "quiet_decoder",
    "read_image",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp")
IMAGE_EXTENSIONS += (".tif", ".tiff", ".ppm", ".pgm")
MAX_PIXELS = 89_478_485  # PIL's decompression-bomb limit, for every decoder
MAX_FILE_BYTES = 256 << 20
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_BINARY", 0)  # O_BINARY: Windows


class UnreadableImage(DataError):
    """An image file that cannot be decoded; the message is the reason."""


def load_image(path: str | os.PathLike[str], in_chans: int, img_size: int) -> torch.Tensor:
    """The image at ``path`` as uint8 (in_chans, img_size, img_size), converted and resized
    exactly as :func:`build` does. Raises :class:`DataError` when it cannot be read."""
    try:
        with quiet_decoder():
            return read_image(Path(path), in_chans, img_size)[0]
    except UnreadableImage as e:
        raise UnreadableImage(f"cannot read image {path}: {e}") from None


def decode_image_bytes(data: bytes, in_chans: int, img_size: int) -> torch.Tensor:
    """:func:`load_image` for an encoded image already in memory."""
    try:
        with quiet_decoder():
            return _decode(data, in_chans, img_size)[0]
    except UnreadableImage as e:
        raise UnreadableImage(f"cannot decode image: {e}") from None


@contextlib.contextmanager
def quiet_decoder() -> Iterator[None]:
    """Silence torchvision.io's deprecation warning, which it gives on every call. Not
    thread-safe (no ``warnings.catch_warnings`` is): enter it once around a loop."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The image decoding", DeprecationWarning)
        yield


def read_image(
    path: str | os.PathLike[str], in_chans: int, img_size: int
) -> tuple[torch.Tensor, bool]:
    """(:func:`load_image`, whether it was resized); :class:`UnreadableImage` gives only the
    reason, for a caller that lists the files it skips. Call it inside :func:`quiet_decoder`."""
    try:
        data = _read_file(path)
    except OSError as e:
        raise UnreadableImage(e.strerror or str(e)) from None
    return _decode(data, in_chans, img_size)


def _read_file(path: str | os.PathLike[str]) -> bytes:
    """The bytes of the file at ``path`` in as few system calls as Python allows (open, fstat,
    read, close: a third of the time ``open(path, "rb").read()`` takes on a small file)."""
    fd = os.open(path, _READ_FLAGS)
    try:
        st = os.fstat(fd)
        if st.st_size > MAX_FILE_BYTES:  # reading would allocate that much
            raise UnreadableImage(f"larger than {MAX_FILE_BYTES >> 20} MiB")
        regular = stat.S_ISREG(st.st_mode)
        data = os.read(fd, st.st_size if regular else 1 << 20)
        if regular and len(data) == st.st_size:
            return data  # the common case: one read (a file growing meanwhile is cut)
        parts, size = [data], len(data)  # a short read, a pipe: read on to the end
        while data := os.read(fd, 1 << 20):
            parts.append(data)
            size += len(data)
            if size > MAX_FILE_BYTES:
                raise UnreadableImage(f"larger than {MAX_FILE_BYTES >> 20} MiB")
        return b"".join(parts)
    finally:
        os.close(fd)


_PNG = b"\x89PNG\r\n\x1a\n"
_UNCHANGED, _GRAY, _RGB = 0, 1, 3  # torchvision.io.ImageReadMode values


@functools.cache
def _decoder() -> Callable[[torch.Tensor, int, bool], torch.Tensor]:
    """torchvision.io's decode_image operator, called directly: the public wrapper logs API
    usage and warns (deprecation) on every call, a third of the time a small PNG takes."""
    from torchvision.io import ImageReadMode, decode_image  # loads the operators

    op = getattr(getattr(torch.ops, "image", None), "decode_image", None)
    if op is not None:
        return op
    return lambda data, mode, _: decode_image(data, mode=ImageReadMode(mode))


def _decode(data: bytes, in_chans: int, img_size: int) -> tuple[torch.Tensor, bool]:
    """(uint8 (in_chans, img_size, img_size), whether it was resized)."""
    if not data:
        raise UnreadableImage("empty file")
    _check_header_size(data)
    mode = _UNCHANGED
    if data.startswith(_PNG):
        if (problem := png_problem(data, MAX_PIXELS)) is not None:
            raise UnreadableImage(problem)  # libpng would crash the process on it (zoo.data.png)
        if data[25] == 3:  # the colour type in IHDR, which png_problem found whole and first
            mode = _RGB  # palette indices are not pixels
    elif data.startswith(b"\xff\xd8"):  # JPEG: CMYK would come out as 4 channels, not RGBA
        mode = _RGB if in_chans == 3 else _GRAY
    try:
        image = _decoder()(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode, False)
    except RuntimeError:
        image = _decode_with_pil(data)  # BMP, TIFF, PPM; raises UnreadableImage for corrupt files
    if image.dtype != torch.uint8:
        image = _to_uint8(image)
    channels, height, width = image.shape
    if channels != in_chans:
        image = _to_chans(image, in_chans)
    resized = height != img_size or width != img_size
    if resized:
        # torchvision's resize(antialias=True) on uint8, without importing transforms
        size = (img_size, img_size)
        image = F.interpolate(image[None], size, mode="bilinear", antialias=True)[0]
    return image, resized


def _check_header_size(data: bytes) -> None:
    """Refuse decompression bombs before decoding: PNG and JPEG state their size up front."""
    size = None
    if data[:8] == _PNG and len(data) >= 24:
        size = struct.unpack(">II", data[16:24])
    elif data[:2] == b"\xff\xd8":
        size = _jpeg_size(data)
    if size is not None and size[0] * size[1] > MAX_PIXELS:
        raise UnreadableImage(f"{size[0]}x{size[1]} pixels is more than {MAX_PIXELS:,}")


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 9 < len(data) and data[i] == 0xFF:
        marker, length = data[i + 1], int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE):
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
        i += 2 + length
    return None


def _decode_with_pil(data: bytes) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
                array = np.asarray(img, dtype=np.int64).clip(0, 65535).astype(np.uint16)
            else:
                array = np.asarray(img.convert("RGBA" if "A" in img.getbands() else "RGB"))
    except Image.UnidentifiedImageError:
        raise UnreadableImage("not an image in a known format, or corrupt") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise UnreadableImage(f"corrupt ({type(e).__name__}: {e})") from None
    tensor = torch.from_numpy(array.copy())
    return tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1)


def _to_uint8(image: torch.Tensor) -> torch.Tensor:
    if image.dtype == torch.uint8:
        return image
    wide = image.to(torch.int32) if image.dtype == torch.uint16 else image.to(torch.int64)
    return ((wide * 255 + 32767) // 65535).to(torch.uint8)  # 16-bit samples, rounded


def _to_chans(image: torch.Tensor, in_chans: int) -> torch.Tensor:
    """1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA) channels -> ``in_chans``; alpha is
    dropped (as PIL's convert does), RGB -> grey with PIL's "L" weights, exactly."""
    channels = image.shape[0]
    colour = image[:3] if channels >= 3 else image[:1]
    if in_chans == 3:
        return colour if colour.shape[0] == 3 else colour.expand(3, -1, -1)
    if colour.shape[0] == 1:
        return colour
    r, g, b = colour.to(torch.int32).unbind(0)
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).to(torch.uint8).unsqueeze(0)
