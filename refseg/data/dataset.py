"""Torch dataset: :class:`RefSample` → letterboxed tensors (+ text-consistent augmentation) → :class:`Item`.

* :class:`RefDataset` letterboxes each sample (paper 1 §4.2) and, for training, applies
  augmentation (:mod:`refseg.data.augment`) whose randomness depends only on
  ``(seed, epoch, index)``, so a resumed run sees exactly the samples an uninterrupted run would:
  horizontal flip that swaps left/right words, a scale/crop jitter that keeps the target inside,
  and copy-paste of another sample's instance (the pasted instance becomes the target, named by
  its category).

Samples come from :mod:`refseg.data.sources`; :class:`refseg.engine.collate.Collator` stacks items
into a model batch.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset

from refseg.data.augment import crop_window, has_position_words, mirror_text, paste_instance
from refseg.data.sample import RefSample
from refseg.data.supervision import category_map
from refseg.data.transforms import Letterbox, to_tensor
from refseg.labels import clean_category
from refseg.limits import check_canvas_size

if TYPE_CHECKING:
    from refseg.config import AugmentConfig

View = tuple[str, bool]  # (image key, flipped): one distinct letterboxed picture


@dataclass
class Item:
    """One letterboxed training or evaluation example."""

    index: int  # of the sample in the dataset
    text: str  # the expression (mirrored when flipped)
    box: Letterbox
    view: View | None  # None when the picture is unique to this draw (pasted)
    mask: torch.Tensor  # float [1, S, S] target on the canvas
    valid: torch.Tensor  # float [1, S, S] 1 inside the image, 0 on the padding
    image: torch.Tensor | None  # float [3, S, S] normalised; None when features are cached
    categories: torch.Tensor | None  # int64 [S, S] segmentation labels (-1 unlabelled), None when unknown
    target_category: int  # segmentation label of the target (-1: none)
    target: np.ndarray | None = None  # bool [H, W] target at the original size (with_targets)


def letterbox_labels(labels: np.ndarray, box: Letterbox) -> np.ndarray:
    """int [H, W] labels → int64 [S, S] on the canvas (nearest neighbour; padding = -1)."""
    from PIL import Image

    canvas = np.full((box.size, box.size), -1, dtype=np.int64)
    resized = Image.fromarray(np.ascontiguousarray(labels, dtype=np.int32)).resize(
        (box.inner_w, box.inner_h), Image.NEAREST
    )
    canvas[: box.inner_h, : box.inner_w] = np.asarray(resized)
    return canvas


def image_key(sample: RefSample) -> str:
    """Identity of a sample's photo (expressions on the same photo share backbone features)."""
    if sample.image_id is not None:
        return f"{sample.source}:{sample.image_id}"
    if isinstance(sample.image, (str, Path)):
        return str(sample.image)
    return f"sample:{sample.id}"


class RefDataset(Dataset):
    """Letterboxed samples; training augmentation is a pure function of ``(seed, epoch, index)``.

    With ``cached=True`` (frozen backbone, cached features) only the horizontal flip is kept:
    crop jitter and pasting would create a new image view for every epoch, so they are
    disabled and each photo has at most two cached views (plain and flipped).
    """

    def __init__(
        self,
        samples: Sequence[RefSample],
        image_size: int,
        augment: "AugmentConfig | None" = None,
        seed: int = 0,
        cached: bool = False,
        with_targets: bool = False,
    ) -> None:
        self.samples = list(samples)
        self.image_size = check_canvas_size(image_size)
        if augment is not None and cached:
            augment = augment.model_copy(update={"crop": 0.0, "copy_paste": 0.0, "pair_paste": 0.0})
        self.augment = augment
        self.seed = seed
        self.cached = cached
        self.with_targets = with_targets
        self.epoch = 0
        self._donors = [
            i for i, s in enumerate(self.samples) if s.mask is not None and s.meta.category
        ]
        self._single_donors: dict[str, list[int]] = {}  # category → donors of one instance (pair pastes)
        for i in self._donors:
            if len(self.samples[i].meta.region_ids or ()) == 1:
                self._single_donors.setdefault(self.samples[i].meta.category, []).append(i)
        self._pair_donors = [i for pool in self._single_donors.values() for i in pool]

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch`` (call before iterating)."""
        self.epoch = epoch

    def __getitem__(self, index: int) -> Item:
        sample = self.samples[index]
        rgb = None if self.cached else sample.load_image()  # cached features need the size only
        shape = sample.image_shape() if rgb is None else rgb.shape[:2]
        mask = sample.load_mask(shape)
        labels = category_map(sample, shape)
        text = sample.sentence
        flip = False
        pasted = paired = False
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            draws = rng.random(3)
            if self._donors and draws[0] < self.augment.copy_paste + self.augment.pair_paste:
                pair = draws[0] >= self.augment.copy_paste
                pasted_view = self._paste_pair(sample, rgb, rng) if pair else self._copy_paste(sample, rgb, rng)
                if pasted_view is not None:
                    rgb, mask, text, pasted_pixels = pasted_view
                    pasted, paired = True, pair
                    if labels is not None:
                        labels = np.where(pasted_pixels, -1, labels)  # the pasted pixels are not labelled
            window = None
            if (
                draws[1] < self.augment.crop
                and not paired  # a crop could cut the other instance of the pair off
                and (self.augment.crop_positions or not has_position_words(text))
            ):
                window = crop_window(mask, self.augment.scale, rng)
            if window is not None:
                rgb, mask = rgb[window], mask[window]
                labels = None if labels is None else labels[window]
            if draws[2] < self.augment.hflip:
                mask, text, flip = mask[:, ::-1], mirror_text(text), True
                rgb = None if rgb is None else rgb[:, ::-1]
                labels = None if labels is None else labels[:, ::-1]
        box = Letterbox(mask.shape[0], mask.shape[1], self.image_size)
        return Item(
            index=index,
            text=text,
            box=box,
            view=(image_key(sample), flip) if not pasted else None,
            mask=torch.from_numpy(box.mask(np.ascontiguousarray(mask))).float()[None],
            valid=torch.from_numpy(box.valid()).float()[None],
            image=None if rgb is None else to_tensor(box.image(np.ascontiguousarray(rgb))),
            categories=None if labels is None else torch.from_numpy(letterbox_labels(labels, box)),
            target_category=-1 if pasted else sample.meta.target_category,
            target=(None if sample.mask is None else mask) if self.with_targets else None,
        )

    def view_image(self, index: int, flip: bool) -> torch.Tensor:
        """The letterboxed image tensor of one cached view (sample ``index``, flipped or not)."""
        rgb = self.samples[index].load_image()
        if flip:
            rgb = rgb[:, ::-1]
        return to_tensor(Letterbox(rgb.shape[0], rgb.shape[1], self.image_size).image(np.ascontiguousarray(rgb)))

    def views(self) -> list[tuple[View, int]]:
        """Distinct image views ``((image key, flipped), first sample index)`` this dataset can yield."""
        flips = (False, True) if self.augment is not None and self.augment.hflip > 0 else (False,)
        seen: dict[View, int] = {}
        for index, sample in enumerate(self.samples):
            key = image_key(sample)
            for flip in flips:
                seen.setdefault((key, flip), index)
        return list(seen.items())

    def _copy_paste(
        self, sample: RefSample, rgb: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, str, np.ndarray] | None:
        """Another photo's instance pasted as the target, named by its category: (image, target,
        text, pasted pixels), or None when no suitable donor was drawn."""
        donor = self.samples[self._donors[int(rng.integers(len(self._donors)))]]
        category = donor.meta.category
        if not _absent_from(sample, donor):
            return None  # the name would not single out the pasted instance
        donor_rgb = donor.load_image()
        pasted = paste_instance(rgb, donor_rgb, donor.load_mask(donor_rgb.shape[:2]), rng)
        if pasted is None:
            return None
        return pasted[0], pasted[1], f"the {category}", pasted[1]

    def _paste_pair(
        self, sample: RefSample, rgb: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, str, np.ndarray] | None:
        """Two instances of one category absent from the photo, one in each half; the target is
        one of them, named by its side or size ("the dog on the left", "the smaller dog"), checked
        by the synthesizer's scene rules. Same return as :meth:`_copy_paste`."""
        from refseg.data.synthesis import Entity, Query, Realizer, Scene

        if not self._pair_donors:
            return None
        lead = self.samples[self._pair_donors[int(rng.integers(len(self._pair_donors)))]]
        pool = self._single_donors[lead.meta.category]  # categories as often as their instances
        donors = [lead, self.samples[pool[int(rng.integers(len(pool)))]]]
        if not all(_absent_from(sample, donor) for donor in donors):
            return None
        image, masks, width = rgb, [], rgb.shape[1]
        for donor, columns in zip(donors, ((0, width // 2), (width // 2, width))):
            donor_rgb = donor.load_image()
            pasted = paste_instance(image, donor_rgb, donor.load_mask(donor_rgb.shape[:2]), rng, columns)
            if pasted is None:
                return None
            image = pasted[0]
            masks.append(pasted[1])
        noun = clean_category(donors[0].meta.category)
        scene = Scene([Entity(i, noun, m, colours=None) for i, m in enumerate(masks)], rgb.shape[:2])
        groups = [[("side", "left"), ("side", "right")], [("size", "largest"), ("size", "smallest")]]
        if rng.random() >= 0.75:  # mostly sides; sizes apply only when one is 1.6 times the other
            groups.reverse()
        if rng.integers(2):
            groups[0].reverse()
        for select in groups[0] + groups[1]:
            query = Query(noun=noun, select=select)
            chosen = scene.referents(query)
            if chosen is not None and len(chosen) == 1:
                target = masks[next(iter(chosen))]
                return image, target, Realizer(rng).realize(query, scene), masks[0] | masks[1]
        return None


def _absent_from(sample: RefSample, donor: RefSample) -> bool:
    """Whether the donor's category is known to be absent from the sample's photo (a pasted
    instance of it is then the only one of its name)."""
    present = sample.meta.image_categories
    return present is not None and donor.meta.category not in present and image_key(donor) != image_key(sample)

