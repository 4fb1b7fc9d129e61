"""refseg: referring image segmentation (LSTM-CNN, RMI, STEP and friends) for researchers and practitioners."""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Segmenter", "create_model", "list_models", "__version__"]


def __getattr__(name: str):  # lazy: `import refseg` stays cheap (no torch import)
    if name == "Segmenter":
        from refseg.api import Segmenter

        return Segmenter
    if name in ("create_model", "list_models"):
        from refseg.models import base

        return getattr(base, name)
    raise AttributeError(f"module 'refseg' has no attribute {name!r}")
