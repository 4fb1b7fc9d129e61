"""What executes a loaded model's network: the :class:`Runner` interface and its registry.

A runner turns letterboxed photos into image features once, then runs any number of
expressions against them. Runners are registered by name (``torch``, ``onnx``) and built with
:func:`create_runner`; tokenisation, letterboxing and post-processing stay outside them
(:class:`refseg.api.Segmenter`), so every runtime gives the same masks.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor

from refseg.errors import ConfigError
from refseg.models.base import Batch, ModelOutput, RefSegModel

if TYPE_CHECKING:
    from refseg.runtime.card import ModelCard


class Runner(Protocol):
    """Executes the network. ``features`` is whatever ``encode_image`` returns (opaque to the caller)."""

    def encode_image(self, images: Tensor) -> Any:
        """Letterboxed, normalised photos [P, 3, S, S] → their image features (computed once)."""

    def run(self, features: Any, tokens: Tensor, lengths: Tensor, texts: list[str]) -> ModelOutput:
        """Features of P photos + N expressions → logits [N, 1, h, w]. P is 1 (one photo shared
        by all N expressions) or N (one photo per expression)."""


#: Builds a runner for a loaded model: ``factory(model, card, device, **options)``.
RunnerFactory = Callable[..., Runner]


@dataclass(frozen=True)
class RunnerEntry:
    """A registered runner: its factory and the extra it needs (None: the core install)."""

    factory: RunnerFactory
    extra: str | None


_RUNNERS: dict[str, RunnerEntry] = {}


def register_runner(name: str, extra: str | None = None) -> Callable[[RunnerFactory], RunnerFactory]:
    """Decorator registering a runner factory under ``name`` (needing the pyproject ``extra``)."""

    def wrap(factory: RunnerFactory) -> RunnerFactory:
        if name in _RUNNERS:
            raise ValueError(f"runner {name!r} is already registered")
        _RUNNERS[name] = RunnerEntry(factory, extra)
        return factory

    return wrap


def list_runners() -> list[str]:
    """Names of the registered runners."""
    return sorted(_RUNNERS)


def check_runner(name: str) -> None:
    """A known runner whose extra is installed, else a one-line ConfigError / MissingExtraError
    (callers check before the slow model load)."""
    from refseg.extras import require

    if name not in _RUNNERS:
        raise ConfigError(f"unknown runtime {name!r}; choose one of: {', '.join(list_runners())}")
    extra = _RUNNERS[name].extra
    if extra is not None:
        require(extra, f"--runtime {name}" if name != "torch" else "the torch runtime")


def create_runner(
    name: str, model: RefSegModel, card: "ModelCard", device: str | torch.device = "cpu", **options: Any
) -> Runner:
    """The runner ``name`` for ``model`` (described by ``card``) on ``device``."""
    check_runner(name)
    return _RUNNERS[name].factory(model, card, device, **options)


def broadcast_batch(
    features: list[Tensor], tokens: Tensor, lengths: Tensor, texts: list[str] | None = None, images: Tensor | None = None
) -> Batch:
    """The model batch of N expressions over image features of one photo (broadcast views, no
    copy) or of N photos (unchanged)."""
    n = tokens.shape[0]
    return Batch(
        images=None if images is None else images.expand(n, *images.shape[1:]),
        tokens=tokens,
        lengths=lengths,
        texts=texts,
        features=[f.expand(n, *f.shape[1:]) for f in features],
    )
