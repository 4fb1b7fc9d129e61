"""Safe image decoding: every image that enters refseg goes through :func:`load_image`."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from refseg.errors import ImageError, ImageTooLargeError

ImageInput = Union[str, Path, bytes, np.ndarray, Image.Image]

#: Images with more pixels than this are refused before decoding (decompression bombs).
MAX_PIXELS = 40_000_000


def load_image(source: ImageInput, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode a path, bytes, PIL image or array into RGB uint8 [H, W, 3].

    EXIF orientation is applied (the mask follows the displayed image); grayscale,
    palette, RGBA, CMYK and 16-bit inputs are converted. Raises :class:`ImageError`
    with a one-line reason for anything that is not a readable image.
    """
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source)
    if isinstance(source, Image.Image):
        return _pil_to_rgb(source, max_pixels)
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageError("image is empty (0 bytes)")
        return _open(io.BytesIO(source), "uploaded image", max_pixels)
    path = Path(source)
    if not path.exists():
        raise ImageError(f"image not found: {path}")
    if path.is_dir():
        raise ImageError(f"image path is a directory: {path}")
    if path.stat().st_size == 0:
        raise ImageError(f"image is empty (0 bytes): {path}")
    return _open(path, str(path), max_pixels)


def _open(fp, name: str, max_pixels: int) -> np.ndarray:
    try:
        with Image.open(fp) as im:
            if im.width * im.height > max_pixels:
                raise ImageTooLargeError(
                    f"{name} is {im.width}x{im.height} pixels, over the limit of {max_pixels:,}"
                )
            im.load()
            return _pil_to_rgb(im, max_pixels)
    except UnidentifiedImageError:
        raise ImageError(f"{name} is not a readable image") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{name} could not be decoded: {str(exc).splitlines()[0]}") from None


def _pil_to_rgb(im: Image.Image, max_pixels: int) -> np.ndarray:
    if im.width * im.height > max_pixels:
        raise ImageTooLargeError(f"image is {im.width}x{im.height} pixels, over the limit of {max_pixels:,}")
    im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        hi = arr.max() if arr.size and arr.max() > 255 else 255.0
        return _array_to_rgb((arr / hi * 255.0).round().astype(np.uint8))
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba)
    return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))


def _array_to_rgb(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4) or min(arr.shape[:2]) < 1:
        raise ImageError(f"image array must be HxW, HxWx3 or HxWx4, got shape {arr.shape}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    arr = arr[:, :, :3]
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and arr.size and arr.max() <= 1.0:
            arr = arr * 255.0
        arr = np.clip(arr, 0, 255).round().astype(np.uint8)
    return np.ascontiguousarray(arr)
