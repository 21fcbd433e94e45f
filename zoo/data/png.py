"""PNG files checked before libpng decodes them.

torchvision's ``decode_png`` turns libpng errors in a PNG's *header* into a RuntimeError, but
an error while it reads the *pixel rows* crashes the whole process with a segmentation fault
(torchvision 0.29 with libpng 1.6): one flipped byte in the image data of one file (a CRC
mismatch, a broken zlib stream, a bad row filter, too few rows) would kill ``zoo predict`` or
a DataLoader worker. :func:`png_problem` finds such files first, in Python with zlib doing the
work, by checking what libpng checks while reading rows:

- every chunk is complete and its CRC matches; IHDR comes first and is well formed;
- the IDAT chunks are consecutive, inflate as one complete zlib stream (its Adler-32
  checksum included) to at least the bytes the image needs, and every row starts with a
  filter type 0-4 (interlaced images: the rows of all seven Adam7 passes);
- the image has at most ``max_pixels`` pixels, so a small file cannot claim a huge image.

Inflating is streamed in pieces, so the check holds at most a few MiB whatever the file says.
It costs one extra inflate of the image data, a small fraction of decoding it.
"""

from __future__ import annotations

import functools
import struct
import zlib

__all__ = ["SIGNATURE", "png_problem"]

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel
_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
# (x0, y0, dx, dy) of each Adam7 interlacing pass
_ADAM7: tuple[tuple[int, int, int, int], ...] = (
    (0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4),
    (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2),
)  # fmt: skip
_PIECE = 1 << 20  # inflate at most this much at a time
_SLACK = 1 << 16  # decompressed bytes allowed past the image data
_CHUNK_HEAD = struct.Struct(">I4s")  # a chunk's length and type
_CRC = struct.Struct(">I")


def png_problem(data: bytes | bytearray, max_pixels: int) -> str | None:
    """Why libpng would fail on the PNG ``data`` while reading its rows, or None when it will
    not (also None when ``data`` is not a PNG at all: that is for the decoder to say)."""
    if not data.startswith(SIGNATURE):
        return None
    view, size = memoryview(data), len(data)
    ihdr: bytes | None = None
    idat: list[memoryview] = []
    pos, idat_ended = len(SIGNATURE), False
    while pos < size:
        if pos + 8 > size:
            return "truncated (the file ends inside a chunk header)"
        length, kind = _CHUNK_HEAD.unpack_from(data, pos)
        end = pos + 12 + length
        if end > size:
            return f"truncated (the {_name(kind)} chunk ends past the end of the file)"
        # the CRC covers the chunk's type and body: one crc32 call over both
        if zlib.crc32(view[pos + 4 : end - 4]) != _CRC.unpack_from(data, end - 4)[0]:
            return f"corrupt (CRC error in the {_name(kind)} chunk)"
        if ihdr is None and kind != b"IHDR":
            return "corrupt (the first chunk is not IHDR)"
        if kind == b"IHDR":
            ihdr = bytes(view[pos + 8 : end - 4])
        elif kind == b"IDAT":
            if idat_ended:
                return "corrupt (IDAT chunks are not consecutive)"
            idat.append(view[pos + 8 : end - 4])
        elif idat:
            idat_ended = True
        if kind == b"IEND":
            break
        pos = end
    if ihdr is None:
        return "truncated (no IHDR chunk)"
    rows, why = _row_layout(ihdr, max_pixels)
    if why is not None:
        return why
    if not idat:
        return "corrupt (no image data: no IDAT chunk)"
    return _inflate_problem(idat, rows)


def _name(kind: bytes) -> str:
    return kind.decode("latin-1") if kind.isalpha() else repr(kind)


@functools.lru_cache(maxsize=64)
def _row_layout(ihdr: bytes, max_pixels: int) -> tuple[tuple[range, ...], str | None]:
    """Offsets of every row's filter byte in the inflated data (one range per pass). Cached:
    a folder's images mostly share one IHDR."""
    if len(ihdr) != 13:
        return (), f"corrupt (IHDR has {len(ihdr)} bytes, not 13)"
    width, height, depth, colour, method, filtering, interlace = struct.unpack(">IIBBBBB", ihdr)
    if not (width and height) or width >= 1 << 31 or height >= 1 << 31:
        return (), f"corrupt (IHDR says {width}x{height} pixels)"
    if colour not in _CHANNELS or depth not in _DEPTHS[colour]:
        return (), f"corrupt (bit depth {depth} with colour type {colour})"
    if method or filtering or interlace > 1:
        return (), "corrupt (unknown compression, filter or interlace method)"
    if width * height > max_pixels:
        return (), f"{width}x{height} pixels is more than {max_pixels:,}"
    # the cap is on pixels; 16-bit samples and alpha multiply what decoding allocates:
    # at most what the largest 8-bit RGBA image allowed decodes to
    decoded = width * height * _CHANNELS[colour] * max(1, depth // 8)
    if decoded > 4 * max_pixels:
        return (), (
            f"{width}x{height} pixels of {_CHANNELS[colour]} {depth}-bit samples decode to "
            f"{decoded >> 20:,} MiB, more than {(4 * max_pixels) >> 20:,} MiB"
        )
    bits = _CHANNELS[colour] * depth
    passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
    rows, start = [], 0
    for x0, y0, dx, dy in passes:
        w, h = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if w <= 0 or h <= 0:
            continue
        stride = 1 + (w * bits + 7) // 8
        rows.append(range(start, start + h * stride, stride))
        start += h * stride
    return tuple(rows), None


def _inflate_problem(idat: list[memoryview], rows: tuple[range, ...]) -> str | None:
    """Inflate the image data in pieces, checking each row's filter byte on the way."""
    expected = rows[-1].stop
    # A small image inflates in one piece; asking zlib for at most that much (not _PIECE)
    # also spares it allocating a large output buffer for every small file.
    most = min(_PIECE, expected + _SLACK + 1)
    inflater = zlib.decompressobj()
    done = 0  # bytes inflated so far
    try:
        for chunk in idat:
            piece = inflater.decompress(chunk, most)
            while True:
                if _bad_filter(piece, done, rows):
                    return "corrupt (a row has an unknown filter type)"
                done += len(piece)
                if done > expected + _SLACK:
                    return "corrupt (more image data than the image has pixels)"
                # a full piece may leave output inside zlib even with no input left
                if not inflater.unconsumed_tail and len(piece) < most:
                    break
                piece = inflater.decompress(inflater.unconsumed_tail, most)
            if inflater.eof:
                break
    except zlib.error as e:
        return f"corrupt image data ({e})"
    if done < expected:
        return f"truncated (image data for {done:,} of {expected:,} bytes)"
    if not inflater.eof:
        return "truncated (the compressed image data does not end)"
    return None


def _bad_filter(piece: bytes, offset: int, rows: tuple[range, ...]) -> bool:
    """Whether a row starting inside ``piece`` (at ``offset`` of the data) has a filter > 4."""
    end = offset + len(piece)
    for r in rows:
        if r.stop <= offset or r.start >= end:
            continue
        first = r.start + max(0, -(-(offset - r.start) // r.step)) * r.step
        filters = piece[first - offset : min(r.stop, end) - offset : r.step]
        if filters and max(filters) > 4:
            return True
    return False
