"""Server limits (a light module: the CLI reads its defaults without importing FastAPI)."""
from __future__ import annotations

from dataclasses import asdict, dataclass


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

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value < 1:
                raise ValueError(f"ServerLimits.{name} must be >= 1, got {value}")
