"""Atomic output files: write to a temporary file in the same folder, fsync, rename.

A reader (or a crash) never sees a half-written file: either the old content or the new.
"""
from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from refseg.errors import OutputError


def _check_target(path: Path) -> None:
    if path.is_dir():
        raise OutputError(f"output path is a directory: {path}")
    parent = path.parent
    if not parent.exists():
        raise OutputError(f"output folder does not exist: {parent}")
    if not parent.is_dir():
        raise OutputError(f"output folder is not a directory: {parent}")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"output folder is not writable: {parent}")


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (write + fsync + rename); returns the path."""
    path = Path(path)
    _check_target(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def png_bytes(image: np.ndarray | Image.Image) -> bytes:
    """Encode an array (uint8 HxW or HxWx3/4) or PIL image as PNG bytes."""
    im = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def save_mask_png(path: str | Path, mask: np.ndarray) -> Path:
    """Write a boolean mask as a 0/255 single-channel PNG, atomically."""
    return atomic_write_bytes(path, png_bytes(mask.astype(np.uint8) * 255))


def save_png(path: str | Path, image: np.ndarray | Image.Image) -> Path:
    """Write an RGB(A) image as PNG, atomically."""
    return atomic_write_bytes(path, png_bytes(image))
