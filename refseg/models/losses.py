"""Losses at the model's output resolution.

Targets on the S x S canvas are resized to the logit grid: ``"area"`` averaging (soft targets,
paper 1 §4.2 trains the low-resolution model on downsampled labels) or ``"nearest"``. The
letterbox padding is excluded through ``valid`` (1 inside the image, 0 on padding); the loss is
the mean over valid pixels, as paper 1 eq. 1 averages over the image.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

RESIZE_MODES = ("area", "nearest")
MISSING_MASKS = "this loss needs target masks (Batch.masks is None)"


def resize_to(maps: Tensor, size: tuple[int, int], mode: str = "area") -> Tensor:
    """Resize float maps [B, C, H, W] to ``size``; ``area`` only when shrinking, else nearest."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")
    size = (int(size[0]), int(size[1]))
    if tuple(maps.shape[-2:]) == size:
        return maps
    if mode == "area" and maps.shape[-2] >= size[0] and maps.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(maps, size)
    return F.interpolate(maps, size=size, mode="nearest")


def _valid_weight(logits: Tensor, valid: Tensor | None, resize: str) -> Tensor:
    """Per-cell weight on the logit grid: the resized ``valid`` map (1 everywhere when None)."""
    if valid is None:
        return torch.ones_like(logits[:, :1])
    return resize_to(valid.to(logits.dtype), logits.shape[-2:], resize)


def _targets(logits: Tensor, masks: Tensor | None, valid: Tensor | None, resize: str) -> tuple[Tensor, Tensor]:
    if masks is None:
        raise ValueError(MISSING_MASKS)
    return resize_to(masks.to(logits.dtype), logits.shape[-2:], resize), _valid_weight(logits, valid, resize)


def weighted_bce(
    logits: Tensor,
    masks: Tensor | None,
    valid: Tensor | None = None,
    pos_weight: float = 3.0,
    neg_weight: float = 1.0,
    resize: str = "area",
) -> Tensor:
    """Class-weighted logistic loss (paper 1 eq. 2: α_f = 3 on foreground, α_b = 1 on background).

    ``logits`` [B, 1, h, w]; ``masks`` and ``valid`` [B, 1, S, S] in {0, 1}.
    """
    target, weight = _targets(logits, masks, valid, resize)
    per_pixel = pos_weight * target * F.softplus(-logits) + neg_weight * (1 - target) * F.softplus(logits)
    return (per_pixel * weight).sum() / weight.sum().clamp(min=1.0)


def bce(logits: Tensor, masks: Tensor | None, valid: Tensor | None = None, resize: str = "area") -> Tensor:
    """Plain (unweighted) logistic loss over valid pixels."""
    return weighted_bce(logits, masks, valid, pos_weight=1.0, neg_weight=1.0, resize=resize)


def soft_iou(
    logits: Tensor, masks: Tensor | None, valid: Tensor | None = None, smooth: float = 1.0, resize: str = "area"
) -> Tensor:
    """1 − soft IoU (Jaccard) of ``sigmoid(logits)`` and the target, per sample, averaged over the batch.

    Unlike the logistic losses, which average over pixels (large targets dominate), every
    expression weighs the same, as in the mean-IoU metric. ``smooth`` (in logit-grid cells) keeps a
    no-target sample's loss defined: it then pushes the whole map towards 0.
    """
    target, weight = _targets(logits, masks, valid, resize)
    prob = torch.sigmoid(logits) * weight
    target = target * weight
    intersection = (prob * target).flatten(1).sum(1)
    union = (prob + target - prob * target).flatten(1).sum(1)
    return (1 - (intersection + smooth) / (union + smooth)).mean()


def distractor_logistic(
    logits: Tensor,
    masks: Tensor | None,
    valid: Tensor | None,
    categories: Tensor | None,
    target_categories: Tensor | None,
    resize: str = "area",
) -> Tensor:
    """Logistic loss on *distractors*: pixels of the target's category outside the target (the
    other zebras when the expression picks one), averaged over valid pixels like :func:`weighted_bce`.

    Added with a weight to a model's loss it raises the background weight there, so a model that
    finds the category but not the instance pays more. ``categories`` [B, S, S] long (-1 =
    unlabelled) and ``target_categories`` [B] long (-1 = unknown, no distractors) share one label
    space; without them the loss is 0.
    """
    if categories is None or target_categories is None:
        return logits.sum() * 0.0
    if masks is None:
        raise ValueError(MISSING_MASKS)
    weight = _valid_weight(logits, valid, resize)
    known = (target_categories >= 0)[:, None, None]
    same = (categories == target_categories[:, None, None]) & known
    outside = same[:, None].to(logits.dtype) * (1 - masks.to(logits.dtype))
    distractor = resize_to(outside, logits.shape[-2:], resize)
    per_pixel = distractor * F.softplus(logits)
    return (per_pixel * weight).sum() / weight.sum().clamp(min=1.0)


def multilabel_logistic(
    word_logits: Tensor,
    present: Tensor,
    masks: Tensor | None,
    valid: Tensor | None = None,
    pos_weight: float = 3.0,
    word_weight: Tensor | None = None,
    resize: str = "area",
) -> Tensor:
    """Per-word baseline loss (paper 1 §4.1): a pixel's label for word i is 1 iff the pixel is
    foreground and word i is in the expression. ``word_logits`` [B, K, h, w], ``present`` [B, K].

    Summed over the K words (each weighted by ``word_weight`` [B, K], default 1) and averaged
    over valid pixels. Positive labels weigh ``pos_weight`` (α_f of eq. 2; 1 = plain loss).
    """
    target, weight = _targets(word_logits, masks, valid, resize)
    labels = target * present.to(word_logits.dtype)[:, :, None, None]
    per_pixel = pos_weight * labels * F.softplus(-word_logits) + (1 - labels) * F.softplus(word_logits)
    if word_weight is not None:
        per_pixel = per_pixel * word_weight.to(per_pixel.dtype)[:, :, None, None]
    return (per_pixel * weight).sum() / weight.sum().clamp(min=1.0)


def category_cross_entropy(logits: Tensor, categories: Tensor) -> Tensor:
    """Per-pixel softmax loss of a category segmentation head; ``categories`` [B, S, S] long, -1 ignored."""
    labels = F.interpolate(categories[:, None].float(), size=logits.shape[-2:], mode="nearest")[:, 0].long()
    if not (labels >= 0).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels, ignore_index=-1)
