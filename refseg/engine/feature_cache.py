"""Backbone taps computed once per image view and reused: for training a frozen backbone, or for
evaluating any model (its weights are fixed then).

Every entry is stored under one :class:`FeatureKey`: what the model's ``encode_image`` depends on
(:meth:`~refseg.models.base.RefSegModel.feature_signature`), the canvas side, the photo before any
augmentation (:func:`~refseg.data.dataset.image_key`) and whether it is mirrored — the only
augmentation a cached view may have. One cache may therefore serve several models and canvas
sizes: runs whose models encode images alike share their entries, the others never see them.

Views are computed in a fixed order and fixed batch size, so the cached values (and hence a
training run) do not depend on when the cache was filled — a resumed run gets the same features
bit for bit.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from refseg.data.dataset import RefDataset
from refseg.models.base import RefSegModel

#: An image view as the dataset names it: (photo key, mirrored).
View = tuple[str, bool]


@dataclass(frozen=True)
class FeatureKey:
    """What the cached taps of one image view depend on."""

    encoder: str  # model.feature_signature(): the image encoder as built
    canvas: int  # letterbox side S
    image: str  # image_key(sample): the photo, before augmentation
    mirrored: bool

    @classmethod
    def of(cls, model: RefSegModel, canvas: int, view: View) -> "FeatureKey":
        return cls(model.feature_signature(), canvas, view[0], view[1])


class FeatureCache:
    """Backbone taps by :class:`FeatureKey`, stored on the CPU in ``dtype``."""

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        self.dtype = dtype
        self._store: dict[FeatureKey, list[torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self._store)

    def missing(self, model: RefSegModel, dataset: RefDataset) -> list[tuple[FeatureKey, int]]:
        """``(key, first sample index)`` of the views of ``dataset`` not cached yet, in dataset order."""
        keys = ((FeatureKey.of(model, dataset.image_size, view), index) for view, index in dataset.views())
        return [(key, index) for key, index in keys if key not in self._store]

    @torch.no_grad()
    def fill(
        self,
        model: RefSegModel,
        dataset: RefDataset,
        device: torch.device,
        batch_size: int = 16,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> None:
        """Compute the taps of every view of ``dataset`` not cached yet."""
        todo = self.missing(model, dataset)
        was_training = model.training
        model.eval()
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            images = torch.stack([dataset.view_image(index, key.mirrored) for key, index in chunk]).to(device)
            taps = model.encode_image(images)
            for k, (key, _) in enumerate(chunk):
                self._store[key] = [t[k].to("cpu", self.dtype).clone() for t in taps]
            if on_progress is not None:
                on_progress(min(start + batch_size, len(todo)), len(todo))
        model.train(was_training)

    def features(
        self, model: RefSegModel, canvas: int, views: Sequence[View], device: torch.device
    ) -> list[torch.Tensor]:
        """Stacked taps ``[B, C, h, w]`` (one tensor per backbone level) of ``model`` for ``views``."""
        per_item = [self._store[FeatureKey.of(model, canvas, view)] for view in views]
        return [
            torch.stack([item[level] for item in per_item]).to(device, torch.float32)
            for level in range(len(per_item[0]))
        ]
