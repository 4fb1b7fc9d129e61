"""Category supervision of a sample (LSTM-CNN+ category head, instance_ref's stuff head).

Sources on COCO or CamVid photos label every region of the photo in the segmentation label space
(:data:`refseg.labels.SEGMENTATION_CATEGORIES`): ``RefSample.meta.category_regions`` holds
``[(label, RLE), ...]`` for the photo and ``RefSample.meta.target_category`` the label of the target
when all its regions share one (else -1).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from refseg.data.masks import decode_mask, encode_rle
from refseg.data.sample import RefSample
from refseg.labels import CAMVID_TO_SEGMENTATION, COCO_ID_TO_SEGMENTATION


def segmentation_label(category_id: int, camvid: bool = False) -> int:
    """A COCO category id (or CamVid class index) → index in the segmentation label space (-1: none)."""
    if camvid:
        return CAMVID_TO_SEGMENTATION[category_id]
    return COCO_ID_TO_SEGMENTATION.get(category_id, -1)


def category_regions(regions: Iterable[tuple[int, Any]], camvid: bool = False) -> list[tuple[int, dict]]:
    """(category id, bool mask or RLE) pairs → (label in the segmentation label space, RLE) for the
    regions whose category is in that space."""
    out = []
    for category_id, mask in regions:
        label = segmentation_label(category_id, camvid)
        if label >= 0:
            out.append((label, mask if isinstance(mask, dict) else encode_rle(mask)))
    return out


def category_map(sample: RefSample, shape: tuple[int, int]) -> np.ndarray | None:
    """int32 [H, W] category labels of the photo (-1 = unlabelled), or None when unknown."""
    labelled = sample.meta.category_regions
    if labelled is None:
        return None
    labels = np.full(shape, -1, dtype=np.int32)
    for label, rle in labelled:
        labels[decode_mask(rle, shape)] = label
    return labels
