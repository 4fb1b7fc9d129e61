"""Logits on the canvas grid → probability at the original image size → boolean mask.

This is the single post-processing path shared by the evaluator, the Python API, the
server and the ONNX runtime, so that every consumer produces the same mask for the same
logits: ``Letterbox.invert`` (bilinear, padding cropped) → sigmoid → ``prob >= threshold``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from refseg.data.transforms import Letterbox

#: Default decision threshold on the foreground probability.
DEFAULT_THRESHOLD = 0.5


@dataclass
class MaskPrediction:
    """Foreground probability float32 [H, W], the thresholded boolean mask [H, W] and its confidence.

    ``confidence`` in [0, 1] ranks masks by how likely they are right (docs/api.md gives how well it
    does on the human dev set); ``empty`` is the "nothing found" answer.
    """

    prob: np.ndarray
    mask: np.ndarray
    confidence: float

    @property
    def empty(self) -> bool:
        return not self.mask.any()


def logits_to_probability(logits: torch.Tensor | np.ndarray, box: Letterbox) -> np.ndarray:
    """Canvas logits ``[h, w]`` or ``[1, h, w]`` (any square resolution) → probability float32 [H, W]."""
    x = torch.as_tensor(logits).detach().float().cpu()
    if x.dim() == 3 and x.shape[0] == 1:
        x = x[0]
    if x.dim() != 2 or x.shape[0] != x.shape[1]:
        raise ValueError(f"expected square canvas logits [h, w] or [1, h, w], got {tuple(x.shape)}")
    return torch.sigmoid(box.invert(x)).numpy().astype(np.float32, copy=False)


def probability_to_mask(prob: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Boolean mask: ``prob >= threshold``."""
    return np.asarray(prob) >= threshold


def mask_confidence(prob: np.ndarray, mask: np.ndarray) -> float:
    """Mean probability inside the mask; the highest probability when the mask is empty.

    An empty mask's confidence is below the threshold, so "nothing found" ranks under every
    non-empty mask. How well it ranks right masks above wrong ones: docs/api.md#nothing-found-and-confidence.
    """
    if mask.any():
        return float(prob[mask].mean())
    return float(prob.max()) if prob.size else 0.0


def finish(prob: np.ndarray, threshold: float = DEFAULT_THRESHOLD, confidence: float | None = None) -> MaskPrediction:
    """Probability at the original size → mask and confidence.

    ``confidence`` is the model's own when it supplies one (``ModelOutput.extras["confidence"]``),
    else :func:`mask_confidence`.
    """
    mask = probability_to_mask(prob, threshold)
    if confidence is None:
        confidence = mask_confidence(prob, mask)
    return MaskPrediction(prob=prob, mask=mask, confidence=float(confidence))


def postprocess(
    logits: torch.Tensor | np.ndarray,
    box: Letterbox,
    threshold: float = DEFAULT_THRESHOLD,
    confidence: float | None = None,
) -> MaskPrediction:
    """One prediction's canvas logits → :class:`MaskPrediction` at the original size."""
    return finish(logits_to_probability(logits, box), threshold, confidence)
