"""Every size cap of refseg in one place, with the checks that apply them (one-line errors).

Untrusted files and options must not make refseg allocate without bound: photos and target masks
are refused above :data:`MAX_PIXELS` before decoding, the network canvas is kept within
[:data:`MIN_CANVAS`, :data:`MAX_CANVAS`], DenseCRF runs on at most :data:`CRF_MAX_PIXELS` and the
server's upload limit within :data:`MAX_UPLOAD_MB`. ``docs/reliability.md`` lists them.
"""
from __future__ import annotations

import math

from refseg.errors import ConfigError

#: Photos and target masks with more pixels than this are refused before decoding.
MAX_PIXELS = 40_000_000
#: Smallest and largest canvas side (pixels) the network runs at.
MIN_CANVAS, MAX_CANVAS = 32, 2048
#: DenseCRF runs on at most this many pixels; larger photos are refined on a downscaled copy.
CRF_MAX_PIXELS = 2_000_000
#: Largest upload limit ``refseg serve --max-upload-mb`` accepts.
MAX_UPLOAD_MB = 1024.0


def check_canvas_size(size: object, what: str = "image_size") -> int:
    """``size`` as an int within [MIN_CANVAS, MAX_CANVAS], else a one-line :class:`ConfigError`."""
    if isinstance(size, bool) or not isinstance(size, (int, float)) or not float(size).is_integer():
        raise ConfigError(f"{what} must be a whole number of pixels, got {size!r}")
    if not MIN_CANVAS <= size <= MAX_CANVAS:
        raise ConfigError(f"{what} must be between {MIN_CANVAS} and {MAX_CANVAS} pixels, got {size:g}")
    return int(size)


def check_pixels(height: int, width: int, what: str, max_pixels: int = MAX_PIXELS) -> None:
    """A claimed ``height`` x ``width`` must be positive and at most ``max_pixels`` (ConfigError)."""
    if height < 1 or width < 1:
        raise ConfigError(f"{what} has an empty size {width}x{height}")
    if height * width > max_pixels:
        raise ConfigError(f"{what} is too large: {width}x{height} pixels, over the limit of {max_pixels:,}")


def upload_bytes(megabytes: float) -> int:
    """The server's upload limit in bytes for ``megabytes`` (finite, within (0, MAX_UPLOAD_MB])."""
    if not math.isfinite(megabytes) or not 0 < megabytes <= MAX_UPLOAD_MB:
        raise ConfigError(f"the upload limit must be above 0 and at most {MAX_UPLOAD_MB:g} MB, got {megabytes}")
    return max(1, int(megabytes * 2**20))
