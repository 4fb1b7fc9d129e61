"""Safe image decoding: every image that enters refseg goes through :func:`load_image`.

Untrusted files are handled defensively:

* only common raster formats are opened (:data:`FORMATS`); PostScript/EPS, which Pillow would
  hand to Ghostscript, and other exotic decoders are refused;
* the pixel count is read from the header and checked against ``max_pixels`` *before* any pixel
  is decoded, so a small file claiming 50 000 x 50 000 pixels costs nothing;
* anything a decoder raises on a malformed file becomes a one-line :class:`ImageError`.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path
from contextlib import contextmanager
from typing import Callable, Iterator, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from refseg.errors import ImageError, ImageTooLargeError, RefsegError
from refseg.limits import MAX_PIXELS  # images with more pixels are refused before decoding

ImageInput = Union[str, Path, bytes, np.ndarray, Image.Image]

#: Pillow formats refseg decodes (JPEG includes the MPO files of phone cameras). Others are refused.
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "PPM")

#: The EXIF tag that says how the stored pixels are turned for display.
ORIENTATION_TAG = 0x0112

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")


def load_image(source: ImageInput, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode a path, bytes, PIL image or array into RGB uint8 [H, W, 3].

    EXIF orientation is applied (the mask follows the displayed image); grayscale,
    palette, RGBA/LA (composited on white), CMYK and 16-bit (scaled by 1/257) inputs are
    converted. Raises :class:`ImageTooLargeError` for more than ``max_pixels`` pixels and
    :class:`ImageError` with a one-line reason for anything that is not a readable image.
    """
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source)
    if isinstance(source, Image.Image):
        return _decode(lambda: source, "image", max_pixels, owned=False)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if not len(source):
            raise ImageError("image is empty (0 bytes)")
        data = bytes(source)
        return _decode(lambda: Image.open(io.BytesIO(data), formats=FORMATS), "uploaded image", max_pixels)
    path = _readable_path(source)
    return _decode(lambda: Image.open(path, formats=FORMATS), str(path), max_pixels)


def load_label_map(
    source: str | Path, convert: Callable[[Image.Image], np.ndarray], max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """A target mask, label map or predicted mask file as stored (no EXIF turn), turned into an
    array by ``convert``, with the guards photos get: the formats of :data:`FORMATS` only, the
    pixel count checked before decoding, every decoder failure a one-line :class:`ImageError`."""
    path = _readable_path(source)
    return _decode(lambda: Image.open(path, formats=FORMATS), str(path), max_pixels, convert=convert)


#: EXIF orientations that display the stored image turned by 90° (width and height swap).
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)


def image_shape(source: str | Path | np.ndarray) -> tuple[int, int]:
    """(H, W) of the image :func:`load_image` would return, read from the file header only
    (EXIF orientation applied), so callers that need just the size skip the decoding. Errors are
    those of :func:`load_image` (for arrays: those of their shape and dtype, nothing is converted)."""
    if isinstance(source, np.ndarray):
        height, width = _checked_array(source).shape[:2]
        return height, width
    path = _readable_path(source)
    with _decoder_errors(str(path)), Image.open(path, formats=FORMATS) as im:
        width, height = im.size
        if im.getexif().get(ORIENTATION_TAG) in _TRANSPOSING_ORIENTATIONS:
            width, height = height, width
    return height, width


def _readable_path(source: object) -> Path:
    """``source`` as the path of an existing, non-empty file, else a one-line ImageError."""
    if not isinstance(source, (str, Path)):
        raise ImageError(f"expected an image path, bytes, PIL image or array, got {type(source).__name__}")
    path = Path(source)
    try:
        if not path.exists():
            raise ImageError(f"image not found: {path}")
        if path.is_dir():
            raise ImageError(f"image path is a directory: {path}")
        if not path.is_file():
            raise ImageError(f"image is not a regular file (a device, FIFO or socket): {path}")
        if path.stat().st_size == 0:
            raise ImageError(f"image is empty (0 bytes): {path}")
    except (OSError, ValueError) as exc:  # e.g. a name that is too long or holds a NUL byte
        raise ImageError(f"cannot read image {str(path)[:200]}: {_first_line(exc)}") from None
    return path


@contextmanager
def _decoder_errors(name: str) -> Iterator[None]:
    """Every failure of Pillow inside the block → a one-line ImageError / ImageTooLargeError."""
    Image.init()  # registers every plugin once (Image.open(formats=...) expects them registered)
    try:
        with warnings.catch_warnings():  # refseg checks the size itself: no Pillow bomb warning on stderr
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    except RefsegError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{name} is too large: {_first_line(exc)}") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name} is not a readable image (supported: {', '.join(FORMATS)})") from None
    except MemoryError:
        raise ImageTooLargeError(f"{name} needs more memory to decode than is available") from None
    except Exception as exc:  # Pillow's parsers raise many types on malformed files (OSError, SyntaxError, ...)
        raise ImageError(f"{name} could not be decoded: {_first_line(exc)}") from None


def _decode(
    open_image: Callable[[], Image.Image],
    name: str,
    max_pixels: int,
    owned: bool = True,
    convert: Callable[[Image.Image], np.ndarray] | None = None,
) -> np.ndarray:
    """Open (header only), check the size, then decode and ``convert`` (default: RGB with EXIF
    orientation); every decoder failure → ImageError.

    ``owned``: the image was opened here and is closed here (not a caller's PIL image).
    """
    with _decoder_errors(name):
        im = open_image()
        try:
            if im.width * im.height > max_pixels:
                raise ImageTooLargeError(
                    f"{name} is too large: {im.width}x{im.height} pixels, over the limit of {max_pixels:,}"
                )
            im.load()
            return (convert or _pil_to_rgb)(im)
        finally:
            if owned:
                im.close()


def _pil_to_rgb(im: Image.Image) -> np.ndarray:
    im = ImageOps.exif_transpose(im)
    if im.mode in _SIXTEEN_BIT_MODES:
        arr = np.asarray(im, dtype=np.float64)
        if arr.size and arr.max() > 255:  # 16-bit range (8-bit data stored as "I" is kept as is)
            arr = arr / 257.0
        return _array_to_rgb(np.clip(arr, 0, 255).round().astype(np.uint8))
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba)
    return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))


def _checked_array(arr: np.ndarray) -> np.ndarray:
    """``arr`` as an H x W x C view, or a one-line ImageError when its shape or dtype is no image's."""
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4) or min(arr.shape[:2]) < 1:
        raise ImageError(f"image array must be HxW, HxWx3 or HxWx4, got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ImageError(f"image array must hold numbers, got dtype {arr.dtype}")
    return arr


def _array_to_rgb(arr: np.ndarray) -> np.ndarray:
    arr = _checked_array(arr)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    arr = arr[:, :, :3]
    if arr.dtype != np.uint8:
        arr = arr.astype(np.float64)
        if not np.isfinite(arr).all():
            raise ImageError("image array contains NaN or infinite values")
        if arr.size and arr.max() <= 1.0:
            arr = arr * 255.0
        arr = np.clip(arr, 0, 255).round().astype(np.uint8)
    return np.ascontiguousarray(arr)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
