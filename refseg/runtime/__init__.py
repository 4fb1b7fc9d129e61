"""Runtimes: runners registered by name (importing this package registers the built-in ones),
the model card and the one model loader."""
from refseg.runtime.base import Runner, broadcast_batch, check_runner, create_runner, list_runners, register_runner
from refseg.runtime.card import ModelCard, Provenance, load_pretrained
from refseg.runtime import onnx_runner  # noqa: F401  (each import registers a runner)
from refseg.runtime import torch_runner  # noqa: F401

__all__ = [
    "ModelCard", "Provenance", "Runner", "broadcast_batch", "check_runner", "create_runner", "list_runners",
    "load_pretrained", "register_runner",
]
