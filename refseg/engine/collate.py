"""Dataset items → model batch: :class:`Collator` stacks :class:`~refseg.data.dataset.Item`\\ s
into a :class:`~refseg.models.base.Batch`, tokenised with the model's tokenizer."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from refseg.data.dataset import Item, View
from refseg.data.transforms import Letterbox
from refseg.models.base import Batch

Tokenize = Callable[[list[str]], "tuple[torch.Tensor, torch.Tensor]"]


@dataclass
class Collated:
    """A model batch with the per-item facts the engine needs beside it."""

    batch: Batch
    indices: list[int]
    boxes: list[Letterbox]
    views: list[View | None]
    targets: list[np.ndarray | None]


class Collator:
    """Stacks dataset items into a :class:`Batch` (tokenised by ``tokenize``) plus their geometry."""

    def __init__(self, tokenize: Tokenize) -> None:
        self.tokenize = tokenize

    def __call__(self, items: list[Item]) -> Collated:
        texts = [it.text for it in items]
        tokens, lengths = self.tokenize(texts)
        images = None if items[0].image is None else torch.stack([it.image for it in items])
        batch = Batch(
            images=images,
            tokens=tokens,
            lengths=lengths,
            texts=texts,
            masks=torch.stack([it.mask for it in items]),
            valid=torch.stack([it.valid for it in items]),
        )
        if any(it.categories is not None for it in items):
            size = items[0].mask.shape[-1]
            unlabelled = torch.full((size, size), -1, dtype=torch.long)
            batch.categories = torch.stack(
                [it.categories if it.categories is not None else unlabelled for it in items]
            )
        target_categories = [it.target_category for it in items]
        if max(target_categories) >= 0:
            batch.target_categories = torch.tensor(target_categories, dtype=torch.long)
        return Collated(
            batch=batch,
            indices=[it.index for it in items],
            boxes=[it.box for it in items],
            views=[it.view for it in items],
            targets=[it.target for it in items],
        )
