"""The Python API: a photo and a phrase in, a mask out.

>>> from refseg import Segmenter
>>> seg = Segmenter.from_pretrained()                      # the bundled model
>>> pred = seg.predict("photo.jpg", "the dog on the left")
>>> pred.mask.shape, pred.empty, pred.confidence          # bool [H, W] at the photo's size

Several expressions on one photo share one backbone pass (``seg.predict(img, [t1, t2])``).
The network runs through a small :class:`Runner` (torch here; ``runtime="onnx"`` uses the
onnxruntime runner from :mod:`refseg.export.onnx`), so tokenisation, letterboxing and
post-processing are the same whatever executes the graph.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor

from refseg.data.images import ImageInput, load_image
from refseg.data.transforms import Letterbox, to_tensor
from refseg.errors import ConfigError, TextError
from refseg.limits import check_canvas_size
from refseg.models.base import Batch, ModelOutput, RefSegModel
from refseg.models.text import UNK, split_words
from refseg.models.layers import probability_to_logit
from refseg.postprocess.masks import finish, logits_to_probability, probability_to_mask

#: Canvas side used when neither the caller nor the checkpoint names one.
DEFAULT_IMAGE_SIZE = 320
#: Expressions run through the text/fusion part in chunks of this many (bounds memory).
TEXT_CHUNK = 16

RUNTIMES = ("torch", "onnx")


class Runner(Protocol):
    """Executes the network. ``features`` is whatever ``encode_image`` returns (opaque to the caller)."""

    def encode_image(self, images: Tensor) -> Any:
        """Letterboxed, normalised images [1, 3, S, S] → image features (computed once per photo)."""

    def run(self, features: Any, tokens: Tensor, lengths: Tensor, texts: list[str]) -> ModelOutput:
        """Image features of one photo + N expressions → ModelOutput with logits [N, 1, h, w]."""


@dataclass
class ImageFeatures:
    """What :class:`TorchRunner` keeps of one photo: its canvas [1, 3, S, S] and the backbone taps."""

    canvas: Tensor
    taps: list[Tensor]


class TorchRunner:
    """Runs a :class:`RefSegModel` with torch: backbone once, then the rest per batch of texts.

    On CPU the model's ``backbone`` (when it has one) runs in channels-last memory format,
    about 8 % less CPU time for EfficientNet-Lite (docs/performance.md); its outputs are made
    contiguous again so the model's head sees ordinary tensors.
    """

    def __init__(self, model: RefSegModel, device: str | torch.device = "cpu", channels_last: bool = True) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        backbone = getattr(model, "backbone", None)
        self.channels_last = channels_last and self.device.type == "cpu" and isinstance(backbone, torch.nn.Module)
        if self.channels_last:
            backbone.to(memory_format=torch.channels_last)

    def encode_image(self, images: Tensor) -> ImageFeatures:
        images = images.to(self.device)
        with torch.inference_mode():
            if not self.channels_last:
                return ImageFeatures(images, self.model.encode_image(images))
            taps = self.model.encode_image(images.contiguous(memory_format=torch.channels_last))
            return ImageFeatures(images, [t.contiguous() for t in taps])

    def run(self, features: ImageFeatures, tokens: Tensor, lengths: Tensor, texts: list[str]) -> ModelOutput:
        n = int(tokens.shape[0])
        batch = Batch(  # broadcast views of the one photo: no copy per text
            images=features.canvas.expand(n, -1, -1, -1),
            tokens=tokens.to(self.device),
            lengths=lengths.to(self.device),
            texts=texts,
            features=[t.expand(n, *t.shape[1:]) for t in features.taps],
        )
        with torch.inference_mode():
            return self.model(batch)


@dataclass
class Candidate:
    """A region an instance-aware model chose from: box (x1, y1, x2, y2 in the photo's pixels),
    label, score (its share of the expression's softmax over all candidates), whether it was
    chosen, and its mask (bool [H, W])."""

    box: tuple[float, float, float, float]
    label: str
    score: float
    chosen: bool
    mask: np.ndarray = field(repr=False)


@dataclass
class Prediction:
    """One expression's result at the photo's original resolution.

    ``mask`` bool [H, W]; ``prob`` float32 [H, W]; ``empty`` is the "nothing found" answer;
    ``confidence`` in [0, 1] ranks predictions by how likely they are right
    (:func:`refseg.postprocess.masks.mask_confidence`, or the model's own); ``tokens`` the words
    the model read. ``extras`` (computed on first access) holds, when the model has them,
    ``word_maps`` float32 [n_words, H, W] (probability after each word, RMI),
    ``word_attention`` float32 [steps, n_words] and ``step_maps`` float32 [steps, H, W]
    (word weights and probability at each recurrent step, STEP). ``candidates`` (instance-aware
    models) lists the regions the expression was scored against, best first.
    """

    text: str
    tokens: list[str]
    mask: np.ndarray
    prob: np.ndarray
    confidence: float
    # what ``extras`` is computed from: the model's extras for this expression, on the canvas grid
    raw_extras: dict[str, Tensor] = field(default_factory=dict, repr=False)
    letterbox: Letterbox | None = field(default=None, repr=False)

    @property
    def empty(self) -> bool:
        """True when no pixel reached the threshold: the model found nothing the text refers to."""
        return not self.mask.any()

    @property
    def area(self) -> float:
        """Fraction of the photo covered by the mask."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    @cached_property
    def extras(self) -> dict[str, np.ndarray]:
        n = len(self.tokens)
        out: dict[str, np.ndarray] = {}
        for key in ("word_maps", "step_maps"):
            if key in self.raw_extras and self.letterbox is not None:
                maps = self.raw_extras[key][:n] if key == "word_maps" else self.raw_extras[key]
                out[key] = np.stack([logits_to_probability(m, self.letterbox) for m in maps])
        if "word_attention" in self.raw_extras:
            out["word_attention"] = self.raw_extras["word_attention"][:, :n].float().cpu().numpy()
        return out

    @cached_property
    def candidates(self) -> list[Candidate]:
        """The candidate regions, best score first (empty for models without candidates)."""
        extras = self.raw_extras
        if "candidate_scores" not in extras or self.letterbox is None:
            return []
        from refseg.models.expression import label_names

        valid = extras["candidate_valid"] > 0
        scores = extras["candidate_scores"].float().masked_fill(~valid, float("-inf")).softmax(-1)
        names = label_names()
        out = []
        for k in torch.argsort(scores, descending=True)[: int(valid.sum())].tolist():
            box = (extras["candidate_boxes"][k] / self.letterbox.scale).tolist()
            out.append(Candidate(
                box=tuple(round(v, 1) for v in box), label=names[int(extras["candidate_labels"][k])],
                score=float(scores[k]), chosen=bool(extras["candidate_chosen"][k] > 0),
                mask=probability_to_mask(logits_to_probability(probability_to_logit(extras["candidate_masks"][k]), self.letterbox), 0.5),
            ))
        return out


class Segmenter:
    """A loaded model ready to segment photos from referring expressions."""

    def __init__(
        self,
        model: RefSegModel,
        image_size: int = DEFAULT_IMAGE_SIZE,
        runner: Runner | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.model = model.eval()
        self.image_size = check_canvas_size(image_size)
        if runner is None:
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
            runner = TorchRunner(model, device)
        self.runner: Runner = runner
        self.meta = dict(meta or {})
        from refseg.engine.evaluator import model_threshold

        #: The model's decision threshold: stored with the checkpoint, else 0.5 (checked here, once).
        self.threshold: float = model_threshold(self.meta)

    def __repr__(self) -> str:
        return f"Segmenter(model={self.model.name!r}, image_size={self.image_size}, runner={type(self.runner).__name__})"

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path | None = None,
        device: str = "cpu",
        runtime: str = "torch",
        image_size: int | None = None,
    ) -> "Segmenter":
        """Load the bundled model (None / ``"default"``), a shipped model by name, or a checkpoint file.

        ``image_size`` overrides the canvas side the model was trained at. ``runtime="onnx"`` runs
        the network with onnxruntime (extra ``onnx``); tokenisation stays in Python.
        """
        from refseg.engine.checkpoint import load_model, resolve_model_path

        if runtime not in RUNTIMES:
            raise ConfigError(f"unknown runtime {runtime!r}; choose one of: {', '.join(RUNTIMES)}")
        path = resolve_model_path(name_or_path)
        model, meta = load_model(path, device=device)
        size = next((s for s in (image_size, meta.get("image_size"), model.config.get("image_size")) if s is not None),
                    DEFAULT_IMAGE_SIZE)
        size = check_canvas_size(size)
        if runtime == "onnx":
            from refseg.export.onnx import create_onnx_runner

            runner: Runner = create_onnx_runner(model, path, image_size=int(size), device=device)
        else:
            runner = TorchRunner(model, device)
        return cls(model, image_size=int(size), runner=runner, meta=meta)

    def predict(
        self,
        image: ImageInput,
        text: str | Sequence[str],
        threshold: float | None = None,
        crf: bool = False,
    ) -> Prediction | list[Prediction]:
        """Segment what ``text`` refers to in ``image`` (path, bytes, PIL image or RGB array).

        A list of expressions returns a list of predictions (the image is encoded once).
        ``threshold`` defaults to the model's (:attr:`threshold`). ``crf=True`` refines each
        probability map with DenseCRF (extra ``crf``).
        """
        texts = _check_texts(text)
        threshold = self.threshold if threshold is None else threshold
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"threshold must be between 0 and 1, got {threshold}")
        refine = None
        if crf:
            from refseg.postprocess.crf import densecrf_module, refine

            densecrf_module()  # a missing extra fails here, before the network runs
        rgb = load_image(image)
        box = Letterbox(rgb.shape[0], rgb.shape[1], self.image_size)
        features = self.runner.encode_image(to_tensor(box.image(rgb)).unsqueeze(0))
        predictions: list[Prediction] = []
        for start in range(0, len(texts), TEXT_CHUNK):
            chunk = texts[start : start + TEXT_CHUNK]
            tokens, lengths = self._tokenize(chunk)
            out = self.runner.run(features, tokens, lengths, chunk)
            for i, sentence in enumerate(chunk):
                prob = logits_to_probability(out.logits[i], box)
                if refine is not None:
                    prob = refine(prob, rgb)
                result = finish(prob, threshold, _model_confidence(out, i, len(chunk)))
                predictions.append(
                    Prediction(
                        text=sentence,
                        tokens=self._words(sentence)[: int(lengths[i])] or [UNK],
                        mask=result.mask,
                        prob=prob,
                        confidence=result.confidence,
                        raw_extras={k: v[i] for k, v in out.extras.items() if _per_sample(v, len(chunk))},
                        letterbox=box,
                    )
                )
        return predictions if not isinstance(text, str) else predictions[0]

    def _tokenize(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        tokens, lengths = self.model.tokenize(texts)
        for text, length in zip(texts, lengths.tolist()):
            n_words = len(self._words(text))
            if n_words > length:
                warnings.warn(
                    f"expression has {n_words} words; the model reads only the first {length}: {text[:60]!r}",
                    stacklevel=3,
                )
        return tokens, lengths

    def _words(self, text: str) -> list[str]:
        """The words the model reads, uncapped; a model with its own tokenizer may define ``words(text)``."""
        return getattr(self.model, "words", split_words)(text)


def _check_texts(text: str | Sequence[str]) -> list[str]:
    texts = [text] if isinstance(text, str) else list(text) if isinstance(text, (list, tuple)) else None
    if not texts:
        raise TextError("give an expression (a string) or a non-empty list of expressions")
    for t in texts:
        if not isinstance(t, str):
            raise TextError(f"expressions must be strings, got {type(t).__name__}")
        if not t.strip():
            raise TextError("the expression is empty")
    return texts


def _model_confidence(out: ModelOutput, i: int, n: int) -> float | None:
    """The model's own confidence of expression ``i`` (``extras["confidence"]`` [N]), if it gives one."""
    value = out.extras.get("confidence")
    return float(value[i]) if value is not None and _per_sample(value, n) else None


def _per_sample(value: Tensor, n: int) -> bool:
    return isinstance(value, Tensor) and value.dim() >= 1 and value.shape[0] == n
