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
    """Foreground probability float32 [H, W] and the thresholded boolean mask [H, W]."""

    prob: np.ndarray
    mask: np.ndarray


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


def postprocess(
    logits: torch.Tensor | np.ndarray, box: Letterbox, threshold: float = DEFAULT_THRESHOLD
) -> MaskPrediction:
    """One prediction's canvas logits → :class:`MaskPrediction` at the original size."""
    prob = logits_to_probability(logits, box)
    return MaskPrediction(prob=prob, mask=probability_to_mask(prob, threshold))


def postprocess_batch(
    logits: torch.Tensor, boxes: list[Letterbox], threshold: float = DEFAULT_THRESHOLD
) -> list[MaskPrediction]:
    """Batched logits ``[B, 1, h, w]`` with one letterbox per item → one prediction per item."""
    if logits.shape[0] != len(boxes):
        raise ValueError(f"{logits.shape[0]} logit maps but {len(boxes)} letterboxes")
    return [postprocess(logits[i], box, threshold) for i, box in enumerate(boxes)]
