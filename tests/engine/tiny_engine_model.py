"""Test-only helpers for the engine tests: a tiny model registered as ``_test_engine_tiny`` and a
generator of tiny coloured-square samples written as a JSONL manifest.

The model is importable by name (``imports: [tiny_engine_model]`` in a config, with this folder
on PYTHONPATH) so that ``torchrun -m refseg train`` subprocesses can build it too. It has a
frozen "backbone" (so the feature cache is exercised), a hashed word embedding (no vocabulary
needed), dropout (so restoring the torch RNG state matters for exact resume) and a 1x1 conv head.
"""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from refseg.data.sample import RefSample
from refseg.models.base import _REGISTRY, Batch, ModelOutput, RefSegModel, register

NAME = "_test_engine_tiny"
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 60, 220), "yellow": (230, 220, 30)}


class TinyEngineModel(RefSegModel):
    """Hashed bag of words → channel gates over a frozen 4x-pooled RGB 'backbone'."""

    def __init__(self, dim: int = 8, buckets: int = 64, frozen: bool = True) -> None:
        super().__init__(dim=dim, buckets=buckets, frozen=frozen)
        self.buckets = buckets
        self.frozen = frozen
        self.stem = nn.Conv2d(3, dim, 3, padding=1)
        self.stem.requires_grad_(not frozen)
        self.embed = nn.Embedding(buckets + 1, dim, padding_idx=0)
        self.dropout = nn.Dropout(0.1)
        self.head = nn.Conv2d(dim, 1, 1)

    @property
    def backbone_frozen(self) -> bool:
        return self.frozen

    def tokenize(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        rows = [[1 + zlib.crc32(w.encode()) % self.buckets for w in t.lower().split()] or [0] for t in texts]
        lengths = torch.tensor([max(1, len(r)) for r in rows])
        tokens = torch.zeros(len(rows), int(lengths.max()), dtype=torch.long)
        for i, row in enumerate(rows):
            tokens[i, : len(row)] = torch.tensor(row)
        return tokens, lengths

    def encode_image(self, images: Tensor) -> list[Tensor]:
        return [F.avg_pool2d(torch.relu(self.stem(images)), 4)]

    def forward(self, batch: Batch) -> ModelOutput:
        features = batch.features if batch.features is not None else self.encode_image(batch.images)
        text = self.embed(batch.tokens).sum(1) / batch.lengths.unsqueeze(1).float()
        fused = features[0] * torch.tanh(self.dropout(text))[:, :, None, None]
        return ModelOutput(logits=self.head(fused))

    def loss(self, out: ModelOutput, batch: Batch) -> Tensor:
        target = F.adaptive_avg_pool2d(batch.masks, out.logits.shape[-2:])
        valid = F.adaptive_avg_pool2d(batch.valid, out.logits.shape[-2:])
        loss = F.binary_cross_entropy_with_logits(out.logits, target, reduction="none")
        return (loss * valid).sum() / valid.sum().clamp(min=1)


if NAME not in _REGISTRY:
    register(NAME)(TinyEngineModel)


def square_samples(n: int, seed: int = 0, size: int = 40, split: str | None = None) -> list[RefSample]:
    """``n`` photos (odd, non-square sizes) with two coloured squares; the expression names one
    of them by colour — or, one time in eight, a colour that is absent (no target)."""
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    samples = []
    for i in range(n):
        h, w = size + int(rng.integers(0, 9)), size + 7 + int(rng.integers(0, 9))
        rgb = np.full((h, w, 3), 110, dtype=np.uint8)
        picked = rng.choice(len(names), size=3, replace=False)
        masks = []
        for k, (y, x) in enumerate([(4, 3), (h // 2, w // 2)]):
            side = int(rng.integers(8, 13))
            m = np.zeros((h, w), dtype=bool)
            m[y : y + side, x : x + side] = True
            rgb[m] = COLOURS[names[picked[k]]]
            masks.append(m)
        target = int(rng.integers(0, 2))
        no_target = i % 8 == 7
        colour = names[picked[2]] if no_target else names[picked[target]]
        side_word = "left" if target == 0 else "right"
        samples.append(
            RefSample(
                id=f"sq{seed}_{i}",
                image=rgb,
                sentence=f"{colour} square on the {side_word}",
                mask=None if no_target else masks[target],
                split=split,
                image_id=f"sq{seed}_{i}",
            )
        )
    return samples


def write_square_manifest(out: Path, n: int, seed: int = 0, size: int = 40) -> Path:
    """:func:`square_samples` written as ``out/refs.jsonl`` + PNGs (train/val split 3:1)."""
    from refseg.data.manifest import write_manifest

    samples = square_samples(n, seed, size)
    for i, s in enumerate(samples):
        s.split = "val" if i % 4 == 3 else "train"
    return write_manifest(samples, out)


def tiny_config_text(manifest: Path, out_dir: Path, **train: object) -> str:
    """YAML of a fast config training the tiny model on a square manifest."""
    settings = {"epochs": 2, "batch_size": 4, "lr": 0.05, "optimizer": "sgd", "log_every": 1,
                "eval_every": 1, "progress": False, "out_dir": str(out_dir), "seed": 3, **train}
    lines = "\n".join(f"  {k}: {v}" for k, v in settings.items())
    return f"""imports: [tiny_engine_model]
model:
  name: {NAME}
  dim: 8
data:
  image_size: 32
  train:
    - {{kind: manifest, path: {manifest}, split: train}}
  val:
    - {{kind: manifest, path: {manifest}, split: val}}
train:
{lines}
"""
