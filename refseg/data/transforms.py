"""Letterbox (resize keeping aspect ratio, pad to S x S; paper 1 §4.2) and its exact inverse.

The image is placed at the top-left corner of the S x S canvas; the rest is padding.
:class:`Letterbox` remembers the geometry so that any map predicted on the canvas
(probabilities, logits, masks) can be mapped back to the original H x W.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from refseg.labels import IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True)
class Letterbox:
    """Geometry of one letterboxed image."""

    orig_h: int
    orig_w: int
    size: int  # side S of the square canvas

    @property
    def scale(self) -> float:
        return self.size / max(self.orig_h, self.orig_w)

    @property
    def inner_h(self) -> int:
        return max(1, min(self.size, round(self.orig_h * self.scale)))

    @property
    def inner_w(self) -> int:
        return max(1, min(self.size, round(self.orig_w * self.scale)))

    def image(self, rgb: np.ndarray) -> np.ndarray:
        """RGB uint8 [H, W, 3] → letterboxed uint8 [S, S, 3] (zero padding).

        Resized with torch's antialiased bilinear filter on uint8. It agrees with Pillow's
        ``BILINEAR`` resize up to rounding (one grey level on photos, two on noise) and runs
        several times faster (vectorised, on torch's threads): the resize is part of every prediction.
        """
        canvas = np.zeros((self.size, self.size, 3), dtype=np.uint8)
        pixels = torch.from_numpy(np.require(rgb, np.uint8, ("C", "W"))).permute(2, 0, 1).unsqueeze(0)  # copies only read-only input
        if (self.inner_h, self.inner_w) != tuple(rgb.shape[:2]):
            pixels = F.interpolate(
                pixels, size=(self.inner_h, self.inner_w), mode="bilinear", antialias=True, align_corners=False
            )
        canvas[: self.inner_h, : self.inner_w] = pixels[0].permute(1, 2, 0).numpy()
        return canvas

    def mask(self, mask: np.ndarray) -> np.ndarray:
        """Boolean [H, W] → boolean [S, S] (nearest neighbour; padding is False)."""
        canvas = np.zeros((self.size, self.size), dtype=bool)
        resized = Image.fromarray(mask.astype(np.uint8) * 255).resize(
            (self.inner_w, self.inner_h), Image.NEAREST
        )
        canvas[: self.inner_h, : self.inner_w] = np.asarray(resized) > 127
        return canvas

    def valid(self) -> np.ndarray:
        """Boolean [S, S]: True inside the image, False on the padding."""
        canvas = np.zeros((self.size, self.size), dtype=bool)
        canvas[: self.inner_h, : self.inner_w] = True
        return canvas

    def invert(self, maps: torch.Tensor) -> torch.Tensor:
        """Maps [..., h, w] predicted on the canvas (any h = w resolution) → [..., H, W].

        The canvas map is resized to S x S (bilinear), the padding cropped, and the
        image part resized to the original size (bilinear). Works on logits or probabilities.
        """
        lead = maps.shape[:-2]
        x = maps.reshape(-1, 1, *maps.shape[-2:]).float()
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        x = x[..., : self.inner_h, : self.inner_w]
        x = F.interpolate(x, size=(self.orig_h, self.orig_w), mode="bilinear", align_corners=False)
        return x.reshape(*lead, self.orig_h, self.orig_w)


def letterbox(rgb: np.ndarray, size: int) -> tuple[np.ndarray, Letterbox]:
    """Convenience: letterbox an RGB image; returns (canvas, geometry)."""
    box = Letterbox(rgb.shape[0], rgb.shape[1], size)
    return box.image(rgb), box


#: ImageNet normalisation on 0..255 pixels as one multiply-add: (x / 255 - mean) / std.
_PIXEL_SCALE = 1.0 / (255.0 * torch.tensor(IMAGENET_STD)).view(3, 1, 1)
_PIXEL_SHIFT = -(torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD)).view(3, 1, 1)


def to_tensor(canvas: np.ndarray) -> torch.Tensor:
    """Letterboxed uint8 [S, S, 3] → ImageNet-normalised float [3, S, S]."""
    pixels = torch.from_numpy(np.require(canvas, requirements=("C", "W"))).permute(2, 0, 1).float()
    return torch.addcmul(_PIXEL_SHIFT, pixels, _PIXEL_SCALE)
