"""zoo.data.png: PNG files that would crash libpng inside torchvision are found first."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zoo.data.png import SIGNATURE, png_problem

LIMIT = 89_478_485
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2))
ADAM7 += ((0, 1, 1, 2),)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(ihdr: bytes, raw: bytes, *, idat: bytes | None = None) -> bytes:
    data = zlib.compress(raw) if idat is None else idat
    return SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def _grey_png(pixels: np.ndarray, *, interlaced: bool = False) -> bytes:
    """An 8-bit grey PNG written by hand (PIL cannot write interlaced PNGs)."""
    h, w = pixels.shape
    passes = ADAM7 if interlaced else ((0, 0, 1, 1),)
    raw = b"".join(
        b"\0" + row.tobytes()
        for x0, y0, dx, dy in passes
        if pixels[y0::dy, x0::dx].size
        for row in pixels[y0::dy, x0::dx]
    )
    return _png(struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, int(interlaced)), raw)


def _pil_png(array: np.ndarray, mode: str | None = None) -> bytes:
    out = io.BytesIO()
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(out, format="PNG")
    return out.getvalue()


def _decode(data: bytes) -> torch.Tensor:
    from torchvision.io import decode_image

    return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8))


RNG = np.random.default_rng(0)
GREY = RNG.integers(0, 256, (13, 11), dtype=np.uint8)


@pytest.mark.parametrize(
    "data",
    [
        _grey_png(GREY),
        _grey_png(GREY, interlaced=True),
        _pil_png(RNG.integers(0, 256, (5, 300, 3), dtype=np.uint8)),
        _pil_png(RNG.integers(0, 256, (9, 7, 4), dtype=np.uint8)),
        _pil_png(GREY, "P"),
        _pil_png(GREY, "1"),
        _pil_png(RNG.integers(0, 65536, (6, 5)).astype(np.uint16)),
    ],
    ids=["grey", "interlaced", "rgb", "rgba", "palette", "1-bit", "16-bit"],
)
def test_valid_pngs_pass_and_decode(data: bytes) -> None:
    assert png_problem(data, LIMIT) is None
    assert _decode(data).ndim == 3


def test_interlaced_rows_are_where_the_check_looks() -> None:
    assert torch.equal(_decode(_grey_png(GREY, interlaced=True))[0], torch.from_numpy(GREY))


def test_not_a_png_is_not_judged() -> None:
    assert png_problem(b"hello", LIMIT) is None
    assert png_problem(b"", LIMIT) is None


def _corruptions() -> dict[str, bytes]:
    ihdr = struct.pack(">IIBBBBB", 11, 13, 8, 0, 0, 0, 0)
    raw = b"".join(b"\0" + row.tobytes() for row in GREY)
    good = _png(ihdr, raw)
    idat = zlib.compress(raw)
    flipped = bytearray(idat)
    flipped[len(flipped) // 2] ^= 0xFF
    bad_adler = idat[:-1] + bytes([idat[-1] ^ 0xFF])
    bad_filter = bytes([9]) + raw[1:]
    crc_broken = bytearray(good)
    crc_broken[50] ^= 0xFF  # inside IDAT's data: its CRC no longer matches
    split = SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat[:10])
    split += _chunk(b"tEXt", b"a\0b") + _chunk(b"IDAT", idat[10:]) + _chunk(b"IEND", b"")
    return {
        "crc": bytes(crc_broken),
        "zlib": _png(ihdr, raw, idat=bytes(flipped)),
        "adler": _png(ihdr, raw, idat=bad_adler),
        "filter": _png(ihdr, bad_filter),
        "short": _png(ihdr, raw[:50]),
        "truncated": good[: len(good) - 20],
        "huge": _png(struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0), raw),
        "bad-depth": _png(struct.pack(">IIBBBBB", 11, 13, 3, 2, 0, 0, 0), raw),
        "split-idat": split,
        "no-idat": SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IEND", b""),
    }


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("crc", "CRC error in the IDAT chunk"),
        ("zlib", "corrupt image data"),
        ("adler", "incorrect data check"),
        ("filter", "unknown filter type"),
        ("short", "truncated (image data for"),
        ("truncated", "truncated"),
        ("huge", "100000x100000 pixels is more than"),
        ("bad-depth", "bit depth 3 with colour type 2"),
        ("split-idat", "not consecutive"),
        ("no-idat", "no IDAT chunk"),
    ],
)
def test_corrupt_pngs_are_found(name: str, reason: str) -> None:
    problem = png_problem(_corruptions()[name], LIMIT)
    assert problem is not None and reason in problem


@pytest.mark.parametrize("name", sorted(_corruptions()))
def test_read_pixels_refuses_corrupt_pngs(name: str) -> None:
    from zoo.data.images import UnreadableImage
    from zoo.data.transforms import read_pixels

    with pytest.raises(UnreadableImage):
        read_pixels(_corruptions()[name], 1)


@pytest.mark.slow
def test_read_pixels_refuses_every_corrupt_png_without_crashing(tmp_path: Path) -> None:
    # In a child process: without the check, libpng's row errors crash the interpreter
    # (SIGSEGV) inside torchvision's decode_png, which would take pytest down with it.
    for name, data in _corruptions().items():
        (tmp_path / f"{name}.png").write_bytes(data)
    code = (
        "import sys, pathlib\n"
        "from zoo.data.transforms import read_pixels\n"
        "from zoo.data.images import UnreadableImage\n"
        "for p in sorted(pathlib.Path(sys.argv[1]).glob('*.png')):\n"
        "    try:\n"
        "        read_pixels(p, 1)\n"
        "        print(p.name, 'DECODED')\n"
        "    except UnreadableImage as e:\n"
        "        print(p.name, 'refused:', e)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == len(_corruptions()) and all("refused:" in line for line in lines), lines


def test_sixteen_bit_rgba_near_the_pixel_cap_is_refused_by_its_decoded_size() -> None:
    """88M pixels pass the pixel cap, but as 16-bit RGBA they decode to 674 MiB (a 687 KB
    file reached 4 GB of memory in predict)."""
    import struct
    import zlib as _zlib

    from zoo.data.png import png_problem

    width = height = 9400
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 6, 0, 0, 0)

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = _zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")
    problem = png_problem(data, 89_478_485)
    assert problem is not None and "decode to 674 MiB" in problem
    eight_bit = data.replace(ihdr, struct.pack(">IIBBBBB", 4000, 4000, 8, 6, 0, 0, 0))
    eight_bit = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", eight_bit[16:29]) + chunk(b"IEND", b"")
    assert "MiB" not in (png_problem(eight_bit, 89_478_485) or "")
