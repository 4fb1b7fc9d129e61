"""The Python API: a photo and a phrase in, a mask out.

>>> from refseg import Segmenter
>>> seg = Segmenter.from_pretrained()                      # the bundled model
>>> pred = seg.predict("photo.jpg", "the dog on the left")
>>> pred.mask.shape, pred.empty, pred.confidence          # bool [H, W] at the photo's size

Several expressions on one photo share one backbone pass (``seg.predict(img, [t1, t2])``).
The network runs through a registered runner (:mod:`refseg.runtime`: ``torch``, or ``onnx``
with onnxruntime), so tokenisation, letterboxing and post-processing (:meth:`Segmenter.decode`,
also what :func:`refseg.engine.evaluator.evaluate` scores) are the same whatever executes the graph.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from refseg.data.images import ImageInput, load_image
from refseg.data.transforms import Letterbox, to_tensor
from refseg.errors import ConfigError, TextError
from refseg.models.base import ModelOutput, RefSegModel
from refseg.models.text import UNK, split_words
from refseg.models.layers import probability_to_logit
from refseg.postprocess.masks import MaskPrediction, finish, logits_to_probability, probability_to_mask
from refseg.runtime import ModelCard, Runner, check_runner, create_runner, load_pretrained

#: Expressions run through the text/fusion part in chunks of this many (bounds memory).
TEXT_CHUNK = 16


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
    labels: tuple[str, ...] = field(default=(), repr=False)  # the model's label names (``candidates``)

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
        valid = extras["candidate_valid"] > 0
        scores = extras["candidate_scores"].float().masked_fill(~valid, float("-inf")).softmax(-1)
        names = self.labels
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
    """A loaded model ready to segment photos from referring expressions.

    ``card`` (:class:`~refseg.runtime.ModelCard`) holds its canvas side, decision threshold,
    label names and provenance; ``runner`` executes the network (default: torch on the
    model's device). ``image_size`` is the deprecated name of ``canvas``.
    """

    def __init__(
        self,
        model: RefSegModel,
        canvas: int | None = None,
        runner: Runner | None = None,
        card: ModelCard | None = None,
        *,
        image_size: int | None = None,
    ) -> None:
        canvas = _canvas_alias(canvas, image_size, "Segmenter")
        self.model = model.eval()
        self.card = (card or ModelCard.describe(model)).with_canvas(canvas)
        if runner is None:
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
            runner = create_runner("torch", model, self.card, device)
        self.runner: Runner = runner

    @property
    def canvas(self) -> int:
        """Side S of the square canvas photos are letterboxed to."""
        return self.card.canvas

    @property
    def threshold(self) -> float:
        """The model's decision threshold: stored with the checkpoint, else 0.5."""
        return self.card.threshold

    @property
    def image_size(self) -> int:
        """Deprecated name of :attr:`canvas`."""
        warnings.warn("Segmenter.image_size is deprecated; use Segmenter.canvas", DeprecationWarning, stacklevel=2)
        return self.canvas

    def __repr__(self) -> str:
        return f"Segmenter(model={self.model.name!r}, canvas={self.canvas}, runner={type(self.runner).__name__})"

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path | None = None,
        device: str = "cpu",
        runtime: str = "torch",
        canvas: int | None = None,
        *,
        image_size: int | None = None,
        **runner_options: Any,
    ) -> "Segmenter":
        """Load the bundled model (None / ``"default"``), a shipped model by name, a run folder or a
        checkpoint file (:func:`refseg.runtime.load_pretrained`).

        ``canvas`` overrides the canvas side the model was trained at. ``runtime`` names a
        registered runner (:func:`refseg.runtime.list_runners`): ``"onnx"`` runs the network with
        onnxruntime (extra ``onnx``); tokenisation stays in Python. ``runner_options`` go to the
        runner (``channels_last=False`` for torch).
        """
        check_runner(runtime)  # an unknown runtime or a missing extra fails before the slow load
        canvas = _canvas_alias(canvas, image_size, "Segmenter.from_pretrained")
        model, card = load_pretrained(name_or_path, device=device, canvas=canvas)
        return cls(model, runner=create_runner(runtime, model, card, device, **runner_options), card=card)

    def check_options(self, threshold: float | None, crf: bool) -> float:
        """The decision threshold to use (the model's when None), checked; with ``crf`` the
        DenseCRF extra is checked too, before anything runs."""
        threshold = self.threshold if threshold is None else threshold
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"threshold must be between 0 and 1, got {threshold}")
        if crf:
            from refseg.postprocess.crf import densecrf_module

            densecrf_module()
        return threshold

    def decode(
        self, out: ModelOutput, i: int, box: Letterbox, threshold: float, photo: np.ndarray | None = None
    ) -> MaskPrediction:
        """Expression ``i`` of a runner's output → probability at the photo's size (refined by
        DenseCRF on ``photo`` when given), mask and confidence: the one post-processing of every
        prediction (API, CLI, server, evaluation)."""
        prob = logits_to_probability(out.logits[i], box)
        if photo is not None:
            from refseg.postprocess.crf import refine

            prob = refine(prob, photo)
        return finish(prob, threshold, _model_confidence(out, i, int(out.logits.shape[0])))

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
        threshold = self.check_options(threshold, crf)
        rgb = load_image(image)
        box = Letterbox(rgb.shape[0], rgb.shape[1], self.canvas)
        features = self.runner.encode_image(to_tensor(box.image(rgb)).unsqueeze(0))
        predictions: list[Prediction] = []
        for start in range(0, len(texts), TEXT_CHUNK):
            chunk = texts[start : start + TEXT_CHUNK]
            tokens, lengths = self._tokenize(chunk)
            out = self.runner.run(features, tokens, lengths, chunk)
            for i, sentence in enumerate(chunk):
                result = self.decode(out, i, box, threshold, rgb if crf else None)
                predictions.append(
                    Prediction(
                        text=sentence,
                        tokens=self._words(sentence)[: int(lengths[i])] or [UNK],
                        mask=result.mask,
                        prob=result.prob,
                        confidence=result.confidence,
                        raw_extras={k: v[i] for k, v in out.extras.items() if _per_sample(v, len(chunk))},
                        letterbox=box,
                        labels=self.card.labels,
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


def _canvas_alias(canvas: int | None, image_size: int | None, where: str) -> int | None:
    """``canvas``, or the deprecated ``image_size`` keyword when only that one is given."""
    if image_size is None:
        return canvas
    warnings.warn(f"{where}(image_size=...) is deprecated; use canvas=...", DeprecationWarning, stacklevel=3)
    return image_size if canvas is None else canvas
