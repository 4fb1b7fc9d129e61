"""Server limits (a light module: the CLI reads its defaults without importing FastAPI)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from refseg.errors import ConfigError


@dataclass(frozen=True)
class ServerLimits:
    """What one request may ask for, and how many requests may be in the server at once."""

    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 25_000_000
    max_text_chars: int = 300
    max_texts: int = 8
    #: requests admitted at once (the one running + those waiting for the worker); more → 503.
    #: The memory held by waiting requests is bounded by queue_size x max_upload_bytes.
    queue_size: int = 256
    #: seconds a request may take to send its whole body; slower uploads get 408 and free their slot
    read_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not (value >= 1 or (name == "read_timeout_s" and value > 0)) or not math.isfinite(value):  # ints >= 1
                raise ConfigError(f"server limit {name} must be a positive finite number, got {value}")
