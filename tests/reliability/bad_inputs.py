"""Builders of odd and broken input files for the reliability tests (all generated in code).

Every valid photo is a blue picture whose *displayed* left half is red, so the red-pixel test
model (``tests/api/tiny_segmenter.py``) must return a mask covering the left half — whatever
the storage mode (palette, CMYK, 16-bit, ...) or the EXIF orientation.
"""
from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable

import numpy as np
from PIL import Image

RED, BLUE = (220, 30, 30), (30, 40, 200)


def left_red(h: int, w: int) -> np.ndarray:
    """RGB uint8 [h, w, 3]: left half red, right half blue."""
    rgb = np.empty((h, w, 3), dtype=np.uint8)
    rgb[:] = BLUE
    rgb[:, : w // 2] = RED
    return rgb


def left_half(h: int, w: int) -> np.ndarray:
    """The expected mask of :func:`left_red`."""
    mask = np.zeros((h, w), dtype=bool)
    mask[:, : w // 2] = True
    return mask


def encode(im: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **params)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC-32 of type + data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_claiming_size(width: int, height: int) -> bytes:
    """A well-formed PNG header for an 8-bit RGB ``width`` x ``height`` image with a tiny IDAT.

    The IDAT holds one compressed scanline only: a decoder that trusted the header would
    allocate width x height x 3 bytes before noticing that the data runs out.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" + b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def exif_rotated_jpeg(h: int, w: int, orientation: int) -> bytes:
    """A JPEG that *displays* as :func:`left_red` (h x w) but is stored rotated, with EXIF
    ``orientation`` 6 (display = stored rotated 90° clockwise) or 8 (counter-clockwise)."""
    displayed = Image.fromarray(left_red(h, w))
    # stored = displayed rotated the other way; PIL's rotate() is counter-clockwise for positive angles
    stored = displayed.rotate(90 if orientation == 6 else -90, expand=True)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(stored, "JPEG", quality=95, exif=exif.tobytes())


def sixteen_bit_png(h: int, w: int) -> bytes:
    """A 16-bit grayscale PNG: a horizontal ramp 0 … 65535."""
    ramp = np.linspace(0, 65535, w).round().astype(np.uint16)
    return encode(Image.fromarray(np.tile(ramp, (h, 1))), "PNG")


def eps_file() -> bytes:
    """A minimal Encapsulated PostScript file (Pillow would hand it to Ghostscript)."""
    return (
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\n"
        b"newpath 0 0 moveto 8 0 lineto 8 8 lineto closepath fill\nshowpage\n%%EOF\n"
    )


#: Valid but unusual photos: name → (bytes builder, displayed (h, w), whether the red half is visible).
VALID_IMAGES: dict[str, tuple[Callable[[], bytes], tuple[int, int], bool]] = {
    "1x1": (lambda: encode(Image.fromarray(left_red(1, 1)), "PNG"), (1, 1), False),
    "thin_1x4000": (lambda: encode(Image.fromarray(left_red(1, 4000)), "PNG"), (1, 4000), True),
    "thin_4000x1": (lambda: encode(Image.fromarray(left_red(4000, 1)), "PNG"), (4000, 1), False),
    "16bit_png": (lambda: sixteen_bit_png(40, 64), (40, 64), False),
    "cmyk_jpeg": (lambda: encode(Image.fromarray(left_red(48, 64)).convert("CMYK"), "JPEG", quality=95), (48, 64), True),
    "rgba_png": (lambda: encode(Image.fromarray(left_red(48, 64)).convert("RGBA"), "PNG"), (48, 64), True),
    "palette_png": (lambda: encode(Image.fromarray(left_red(48, 64)).convert("P"), "PNG"), (48, 64), True),
    "grayscale_png": (lambda: encode(Image.fromarray(left_red(48, 64)).convert("L"), "PNG"), (48, 64), False),
    "exif_orientation_6": (lambda: exif_rotated_jpeg(48, 80, 6), (48, 80), True),
    "exif_orientation_8": (lambda: exif_rotated_jpeg(48, 80, 8), (48, 80), True),
}

#: Broken uploads: name → (file name, bytes builder, expected phrase in the one-line error).
BROKEN_IMAGES: dict[str, tuple[str, Callable[[], bytes], str]] = {
    "zero_byte": ("empty.jpg", lambda: b"", "empty"),
    "truncated_jpeg": (
        "cut.jpg", lambda: encode(Image.fromarray(left_red(120, 160)), "JPEG", quality=95)[:900], "decoded"
    ),
    "text_named_jpg": ("notes.jpg", lambda: b"these are my notes, not a photo\n" * 20, "not a readable image"),
    "eps_postscript": ("drawing.eps", eps_file, "not a readable image"),
    "bomb_50000x50000": ("bomb.png", lambda: png_claiming_size(50_000, 50_000), "too large"),
    "bomb_under_pillow_limit": ("big.png", lambda: png_claiming_size(8_000, 6_000), "too large"),
}
