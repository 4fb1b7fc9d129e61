"""Text-consistent augmentation: each change of the picture keeps the expression true of the target.

A horizontal flip swaps the left/right words of the expression (:func:`mirror_text`); a crop
keeps the whole target inside (:func:`crop_window`) and may skip expressions that locate the
target in the picture (:func:`has_position_words`); :func:`paste_instance` pastes another
photo's instance, which becomes the new target.
"""
from __future__ import annotations

import re

import numpy as np

_MIRROR = {"left": "right", "leftmost": "rightmost", "lefthand": "righthand", "west": "east"}
_MIRROR.update({v: k for k, v in list(_MIRROR.items())})
_MIRROR_RE = re.compile(r"\b(" + "|".join(sorted(_MIRROR, key=len, reverse=True)) + r")\b", re.IGNORECASE)


def mirror_text(text: str) -> str:
    """The expression for the horizontally flipped image: left ↔ right, leftmost ↔ rightmost, …"""

    def swap(match: re.Match) -> str:
        word = match.group(0)
        new = _MIRROR[word.lower()]
        if word.isupper():
            return new.upper()
        return new.capitalize() if word[0].isupper() else new

    return _MIRROR_RE.sub(swap, text)


_POSITION_WORDS = (
    *_MIRROR, "top", "bottom", "upper", "lower", "above", "below", "middle", "center", "centre", "front",
    "back", "behind", "near", "nearest", "far", "farthest", "furthest", "closest", "next", "beside", "between",
    "corner", "edge", "side", "first", "second", "third", "last",
)
_POSITION_RE = re.compile(r"\b(" + "|".join(_POSITION_WORDS) + r")\b", re.IGNORECASE)


def has_position_words(text: str) -> bool:
    """Whether the expression locates its target in the picture ("on the left", "second from
    the top", "behind the car"): a crop can make such an expression false, for the target may
    no longer be on the left, nor the car in the picture."""
    return _POSITION_RE.search(text) is not None


def crop_window(
    mask: np.ndarray, scale: tuple[float, float], rng: np.random.Generator
) -> tuple[slice, slice] | None:
    """A random crop (rows, columns) with the image's aspect ratio and side fraction in ``scale``
    that contains the whole target; None when the drawn size cannot hold the target."""
    h, w = mask.shape
    s = rng.uniform(*scale)
    ch, cw = max(1, round(h * s)), max(1, round(w * s))
    ys, xs = np.nonzero(mask)
    if ys.size:
        y_lo, y_hi = max(0, ys.max() + 1 - ch), min(ys.min(), h - ch)
        x_lo, x_hi = max(0, xs.max() + 1 - cw), min(xs.min(), w - cw)
        if y_lo > y_hi or x_lo > x_hi:
            return None
    else:
        y_lo, y_hi, x_lo, x_hi = 0, h - ch, 0, w - cw
    y0 = int(rng.integers(y_lo, y_hi + 1))
    x0 = int(rng.integers(x_lo, x_hi + 1))
    return slice(y0, y0 + ch), slice(x0, x0 + cw)


def paste_instance(
    rgb: np.ndarray,
    donor_rgb: np.ndarray,
    donor_mask: np.ndarray,
    rng: np.random.Generator,
    columns: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Paste the masked donor instance at a random place and scale, wholly inside ``columns``
    (first, end) if given; returns (image, new target), or None when it does not fit."""
    from PIL import Image

    ys, xs = np.nonzero(donor_mask)
    if not ys.size:
        return None
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    patch, patch_mask = donor_rgb[y0:y1, x0:x1], donor_mask[y0:y1, x0:x1]
    h, w = rgb.shape[:2]
    side = rng.uniform(0.25, 0.6) * min(h, w)  # longer side of the pasted instance
    factor = side / max(patch.shape[:2])
    ph, pw = max(2, round(patch.shape[0] * factor)), max(2, round(patch.shape[1] * factor))
    first, end = columns or (0, w)
    if ph > h or pw > end - first:
        return None
    patch = np.asarray(Image.fromarray(patch).resize((pw, ph), Image.BILINEAR))
    patch_mask = np.asarray(Image.fromarray(patch_mask.astype(np.uint8) * 255).resize((pw, ph), Image.NEAREST)) > 127
    if not patch_mask.any():
        return None
    top, left = int(rng.integers(0, h - ph + 1)), int(rng.integers(first, end - pw + 1))
    out = rgb.copy()
    region = out[top : top + ph, left : left + pw]
    region[patch_mask] = patch[patch_mask]
    target = np.zeros((h, w), dtype=bool)
    target[top : top + ph, left : left + pw] = patch_mask
    return out, target
