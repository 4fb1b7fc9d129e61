"""A deterministic test-only model for the API / CLI / demo tests: it segments red pixels.

Logits = ``gain * (red - blue)`` of the normalised image (pooled 4x), so a red object on a
blue background has a known mask at any size or orientation. It also emits RMI-style
``word_maps`` and STEP-style ``word_attention`` so the extras plumbing is exercised, and it
counts ``encode_image`` calls. Registered once under ``_test_red``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from refseg.engine.checkpoint import save_model
from refseg.models.base import _REGISTRY, Batch, ModelOutput, RefSegModel, register
from refseg.models.text import split_words

NAME = "_test_red"
STEPS = 3


class RedModel(RefSegModel):
    encode_calls = 0

    def __init__(self, max_words: int = 6) -> None:
        super().__init__(max_words=max_words)
        self.max_words = max_words
        self.gain = nn.Parameter(torch.tensor(8.0))

    def tokenize(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        rows = [[1 + sum(w.encode()) % 97 for w in split_words(t)][: self.max_words] or [1] for t in texts]
        lengths = torch.tensor([len(r) for r in rows])
        tokens = torch.zeros(len(rows), int(lengths.max()), dtype=torch.long)
        for i, row in enumerate(rows):
            tokens[i, : len(row)] = torch.tensor(row)
        return tokens, lengths

    def encode_image(self, images: Tensor) -> list[Tensor]:
        type(self).encode_calls += 1
        return [F.avg_pool2d(images, 4)]

    def forward(self, batch: Batch) -> ModelOutput:
        features = batch.features if batch.features is not None else self.encode_image(batch.images)
        f = features[0]
        logits = self.gain * (f[:, 0:1] - f[:, 2:3])
        t = batch.tokens.shape[1]
        ramp = torch.arange(1, t + 1, dtype=logits.dtype).view(1, t, 1, 1) / t
        attention = torch.softmax(torch.randn(batch.size, STEPS, t, generator=torch.Generator().manual_seed(0)), -1)
        return ModelOutput(logits=logits, extras={"word_maps": logits * ramp, "word_attention": attention})


if NAME not in _REGISTRY:
    register(NAME)(RedModel)


def save_red_model(folder: Path, max_words: int = 6, image_size: int = 64) -> Path:
    """Write the red-pixel model as a checkpoint under ``folder``; returns its path."""
    return save_model(folder / "red.safetensors", RedModel(max_words=max_words), {"image_size": image_size})


def red_square_photo(h: int, w: int, box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A blue photo of size h x w with a red rectangle ``box`` = (top, left, bottom, right); returns (rgb, mask)."""
    rgb = np.zeros((h, w, 3), dtype=np.uint8)
    rgb[..., 2] = 200
    mask = np.zeros((h, w), dtype=bool)
    top, left, bottom, right = box
    mask[top:bottom, left:right] = True
    rgb[mask] = (220, 30, 30)
    return rgb, mask
