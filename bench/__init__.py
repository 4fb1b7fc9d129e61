"""Measuring tools, each run from the repository root as ``python -m bench.<tool>``."""
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: The shared data folder next to the checkout (tools that need it skip cleanly without it).
SHARED_DATA = REPO.parent / "shared" / "data"
