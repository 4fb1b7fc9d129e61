"""Decoding and encoding of target masks (PNG, COCO RLE, arrays)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils


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
        with Image.open(source) as im:
            return np.asarray(im.convert("L")) > 0
    if isinstance(source, dict):
        rle = dict(source)
        if isinstance(rle.get("counts"), list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(rle, *rle["size"])
        elif isinstance(rle.get("counts"), str):
            rle["counts"] = rle["counts"].encode("ascii")
        return mask_utils.decode(rle).astype(bool)
    raise TypeError(f"unsupported mask source: {type(source).__name__}")


def encode_rle(mask: np.ndarray) -> dict:
    """Compressed COCO RLE of a boolean mask, JSON-ready (counts as str)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
