"""Decoding and encoding of target masks (PNG, COCO RLE, arrays) via pycocotools.

Mask files are untrusted like photos: a PNG goes through :func:`~refseg.data.images.load_label_map`
(allowed formats, pixel cap before decoding) and an RLE through
:func:`~refseg.data.annotations.check_rle` (size cap, counts that cover exactly its pixels)
before pycocotools sees it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from refseg.data.annotations import check_rle
from refseg.data.images import load_label_map


def decode_mask(source, size: tuple[int, int] | None = None) -> np.ndarray:
    """Turn a :data:`~refseg.data.sample.MaskSource` into a boolean [H, W] array.

    ``size`` (H, W) is used only for ``None`` (no target → all False).
    """
    if source is None:
        if size is None:
            raise ValueError("size is needed to build the empty mask of a no-target sample")
        return np.zeros(size, dtype=bool)
    if isinstance(source, np.ndarray):
        return source.astype(bool, copy=False)
    if isinstance(source, (str, Path)):
        return load_label_map(source, _nonzero)
    if isinstance(source, dict):
        check_rle(source)
        rle = dict(source)
        if isinstance(rle.get("counts"), list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(rle, *rle["size"])
        elif isinstance(rle.get("counts"), str):
            rle["counts"] = rle["counts"].encode("ascii")
        return mask_utils.decode(rle).astype(bool)
    raise TypeError(f"unsupported mask source: {type(source).__name__}")


def _nonzero(im: Image.Image) -> np.ndarray:
    return np.asarray(im.convert("L")) > 0


def encode_rle(mask: np.ndarray) -> dict:
    """Compressed COCO RLE of a boolean mask, JSON-ready (counts as str)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
