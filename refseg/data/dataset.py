"""Torch dataset: :class:`RefSample` → letterboxed tensors (+ text-consistent augmentation) → :class:`Batch`.

* :func:`load_samples` reads the dataset specs of a config (JSONL manifest, refer format, COCO
  instances / panoptic / CamVid with on-the-fly expression synthesis and caption grounding,
  ShapeRef) and concatenates them.
* :class:`RefDataset` letterboxes each sample (paper 1 §4.2) and, for training, applies
  augmentation whose randomness depends only on ``(seed, epoch, index)``, so a resumed run sees
  exactly the samples an uninterrupted run would: horizontal flip that swaps left/right words,
  a scale/crop jitter that keeps the target inside, and copy-paste of another sample's instance
  (the pasted instance becomes the target, named by its category).
* :class:`Collator` stacks items and tokenises with the model's tokenizer.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from refseg.data.annotations import loads
from refseg.data.sample import RefSample
from refseg.data.transforms import Letterbox, to_tensor
from refseg.errors import ConfigError
from refseg.limits import check_canvas_size

if TYPE_CHECKING:
    from refseg.config import AugmentConfig, Config, DatasetSpec
    from refseg.models.base import Batch

Tokenize = Callable[[list[str]], "tuple[torch.Tensor, torch.Tensor]"]

# --------------------------------------------------------------------------- reading specs


def load_samples(config: "Config", group: str) -> list[RefSample]:
    """All samples of ``config.data.<group>`` ("train" or "val"), specs concatenated in order."""
    from refseg.config import check_data_paths, resolve_path

    check_data_paths(config)
    samples: list[RefSample] = []
    for i, spec in enumerate(getattr(config.data, group)):
        path = resolve_path(config, spec.path) if spec.path else None
        part = read_spec(spec, path)
        if spec.exclude_images:
            listed = read_image_ids(spec.exclude_images)
            part = [s for s in part if s.image_id is None or str(s.image_id) not in listed]
        if spec.only_images:
            listed = read_image_ids(spec.only_images)
            part = [s for s in part if s.image_id is not None and str(s.image_id) in listed]
        if spec.limit > 0:
            part = part[: spec.limit]
        if not part:
            raise ConfigError(f"data.{group}.{i} ({spec.kind} {spec.path or ''} {spec.split}) has no samples")
        samples.extend(part)
    return samples


def read_image_ids(path: str | Path) -> set[str]:
    """The ``image_id`` values named by a JSONL file (one object per line; other keys ignored)."""
    ids: set[str] = set()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the photo list ({type(exc).__name__})") from None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        record = loads(line, f"{path}:{number}")
        if not isinstance(record, dict):
            raise ConfigError(f"{path}:{number}: not a JSON object")
        if record.get("image_id") is None:
            raise ConfigError(f"{path}:{number}: no image_id")
        ids.add(str(record["image_id"]))
    return ids


def read_spec(spec: "DatasetSpec", path: Path | None) -> list[RefSample]:
    """The samples of one dataset spec (``path`` already resolved)."""
    if spec.kind == "shaperef":
        from refseg.data.shapes import generate_samples

        samples = generate_samples(spec.n, spec.seed, **spec.options)
        return [s for s in samples if not spec.split or s.split in (None, spec.split)]
    if spec.kind == "manifest":
        from refseg.data.manifest import read_manifest

        return read_manifest(path, split=spec.split or None)
    if spec.kind == "refer":
        return _refer_samples(spec, path)
    return _synthesized_samples(spec, path)


def _refer_samples(spec: "DatasetSpec", root: Path) -> list[RefSample]:
    """Refer samples. Those on COCO photos (not refclef, whose categories are ReferIt's) carry the
    category supervision of synthesized data: the ref's category and every annotated region of the
    photo (paper 2 §2.3 trains its category branch on COCO's labels of the same photos)."""
    from refseg.data.refer import ReferDataset

    refer = ReferDataset(root, spec.dataset, spec.split_by, images=spec.images or None)
    samples = refer.samples(spec.split)
    if spec.dataset == "refclef":
        return samples
    regions: dict[int, list[tuple[int, dict]]] = {}
    for sample in samples:
        image_id = int(sample.image_id)
        if image_id not in regions:
            regions[image_id] = category_regions(refer.image_regions(image_id), spec.kind)
        sample.meta[CATEGORY_REGIONS] = regions[image_id]  # one list shared by the photo's samples
        sample.meta[TARGET_CATEGORY] = segmentation_label(sample.meta["category_id"], spec.kind)
    return samples


def _synthesized_samples(spec: "DatasetSpec", root: Path) -> list[RefSample]:
    """COCO instances / panoptic / CamVid regions → synthesized expressions (paper 2 §2.2) — or,
    with ``synthesize: 0``, one category-name expression per category — plus caption-grounded
    expressions when ``captions`` is set."""
    from refseg.data.captions import ground_captions
    from refseg.data.coco import region_sample
    from refseg.data.coco import region_samples

    rng = np.random.default_rng(spec.seed)
    samples: list[RefSample] = []
    for item in _region_images(spec, root):
        part = region_samples(item, spec.synthesize, rng)
        if spec.captions and item.captions:
            by_id = {r.id: r for r in item.regions}
            for k, expression in enumerate(ground_captions(item.captions, item.regions)):
                regions = [by_id[i] for i in expression.region_ids]
                part.append(region_sample(item, f"cap{k}", expression.text, regions, expression.kind))
        labelled = category_regions(((r.category_id, r.mask) for r in item.regions), spec.kind)
        label_of = {r.id: segmentation_label(r.category_id, spec.kind) for r in item.regions}
        for sample in part:
            sample.meta[CATEGORY_REGIONS] = labelled  # one list shared by the photo's samples
            targets = {label_of[i] for i in sample.meta["region_ids"]}
            sample.meta[TARGET_CATEGORY] = targets.pop() if len(targets) == 1 else -1
        samples.extend(part)
    return samples


#: ``RefSample.meta`` key: ``[(label, RLE), ...]`` of every region of the photo, where ``label``
#: indexes :data:`refseg.models.categories.SEGMENTATION_CATEGORIES` (LSTM-CNN+ category head).
CATEGORY_REGIONS = "category_regions"
#: ``RefSample.meta`` key: the label (same space) of the sample's target when all its regions share
#: one, else -1. It supervises the text→category classifier of LSTM-CNN+.
TARGET_CATEGORY = "target_category"


def segmentation_label(category_id: int, kind: str) -> int:
    """A COCO category id or CamVid class index → index in the segmentation label space (-1: none)."""
    from refseg.models.categories import CAMVID_TO_SEGMENTATION, COCO_ID_TO_SEGMENTATION

    if kind == "camvid":
        return CAMVID_TO_SEGMENTATION[category_id]
    return COCO_ID_TO_SEGMENTATION.get(category_id, -1)


def category_regions(regions: Iterable[tuple[int, Any]], kind: str) -> list[tuple[int, dict]]:
    """(category id, bool mask or RLE) pairs → (label in the segmentation label space, RLE) for the
    regions whose category is in that space (COCO ids, or CamVid classes for ``kind="camvid"``)."""
    from refseg.data.masks import encode_rle

    out = []
    for category_id, mask in regions:
        label = segmentation_label(category_id, kind)
        if label >= 0:
            out.append((label, mask if isinstance(mask, dict) else encode_rle(mask)))
    return out


def category_map(sample: RefSample, shape: tuple[int, int]) -> np.ndarray | None:
    """int32 [H, W] category labels of the photo (-1 = unlabelled), or None when unknown."""
    labelled = sample.meta.get(CATEGORY_REGIONS)
    if labelled is None:
        return None
    from refseg.data.masks import decode_mask

    labels = np.full(shape, -1, dtype=np.int32)
    for label, rle in labelled:
        labels[decode_mask(rle, shape)] = label
    return labels


def _region_images(spec: "DatasetSpec", root: Path):
    if spec.kind == "coco-instances":
        from refseg.data.coco import iter_instances

        return iter_instances(root, spec.split, **spec.options)
    if spec.kind == "coco-panoptic":
        from refseg.data.coco import iter_panoptic

        return iter_panoptic(root, spec.split, **spec.options)
    from refseg.data.camvid import iter_camvid

    return iter_camvid(root, spec.split, **spec.options)


# --------------------------------------------------------------------------- augmentation

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


def _paste_instance(
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


# --------------------------------------------------------------------------- dataset


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
            augment = replace(augment, crop=0.0, copy_paste=0.0, pair_paste=0.0)
        self.augment = augment
        self.seed = seed
        self.cached = cached
        self.with_targets = with_targets
        self.epoch = 0
        self._donors = [
            i for i, s in enumerate(self.samples) if s.mask is not None and s.meta.get("category")
        ]
        self._single_donors: dict[str, list[int]] = {}  # category → donors of one instance (pair pastes)
        for i in self._donors:
            if len(self.samples[i].meta.get("region_ids", ())) == 1:
                self._single_donors.setdefault(self.samples[i].meta["category"], []).append(i)
        self._pair_donors = [i for pool in self._single_donors.values() for i in pool]

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch`` (call before iterating)."""
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict[str, Any]:
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
        item: dict[str, Any] = {
            "index": index,
            "text": text,
            "box": box,
            "view": (image_key(sample), flip) if not pasted else None,
            "mask": torch.from_numpy(box.mask(np.ascontiguousarray(mask))).float()[None],
            "valid": torch.from_numpy(box.valid()).float()[None],
            "image": None if rgb is None else to_tensor(box.image(np.ascontiguousarray(rgb))),
            "categories": None if labels is None else torch.from_numpy(letterbox_labels(labels, box)),
            "target_category": -1 if pasted else int(sample.meta.get(TARGET_CATEGORY, -1)),
        }
        if self.with_targets:
            item["target"] = None if sample.mask is None else mask
        return item

    def view_image(self, index: int, flip: bool) -> torch.Tensor:
        """The letterboxed image tensor of one cached view (sample ``index``, flipped or not)."""
        rgb = self.samples[index].load_image()
        if flip:
            rgb = rgb[:, ::-1]
        return to_tensor(Letterbox(rgb.shape[0], rgb.shape[1], self.image_size).image(np.ascontiguousarray(rgb)))

    def views(self) -> list[tuple[tuple[str, bool], int]]:
        """Distinct image views ``((image key, flipped), first sample index)`` this dataset can yield."""
        flips = (False, True) if self.augment is not None and self.augment.hflip > 0 else (False,)
        seen: dict[tuple[str, bool], int] = {}
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
        category = donor.meta["category"]
        if not _absent_from(sample, donor):
            return None  # the name would not single out the pasted instance
        donor_rgb = donor.load_image()
        pasted = _paste_instance(rgb, donor_rgb, donor.load_mask(donor_rgb.shape[:2]), rng)
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
        from refseg.data.vocabulary import clean_category

        if not self._pair_donors:
            return None
        lead = self.samples[self._pair_donors[int(rng.integers(len(self._pair_donors)))]]
        pool = self._single_donors[lead.meta["category"]]  # categories as often as their instances
        donors = [lead, self.samples[pool[int(rng.integers(len(pool)))]]]
        if not all(_absent_from(sample, donor) for donor in donors):
            return None
        image, masks, width = rgb, [], rgb.shape[1]
        for donor, columns in zip(donors, ((0, width // 2), (width // 2, width))):
            donor_rgb = donor.load_image()
            pasted = _paste_instance(image, donor_rgb, donor.load_mask(donor_rgb.shape[:2]), rng, columns)
            if pasted is None:
                return None
            image = pasted[0]
            masks.append(pasted[1])
        noun = clean_category(donors[0].meta["category"])
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
    present = sample.meta.get("image_categories")
    return present is not None and donor.meta["category"] not in present and image_key(donor) != image_key(sample)


class Collator:
    """Stacks dataset items into a :class:`Batch` (tokenised by ``tokenize``) plus their geometry."""

    def __init__(self, tokenize: Tokenize) -> None:
        self.tokenize = tokenize

    def __call__(self, items: list[dict[str, Any]]) -> "Collated":
        from refseg.models.base import Batch

        texts = [it["text"] for it in items]
        tokens, lengths = self.tokenize(texts)
        images = None if items[0]["image"] is None else torch.stack([it["image"] for it in items])
        batch = Batch(
            images=images,
            tokens=tokens,
            lengths=lengths,
            texts=texts,
            masks=torch.stack([it["mask"] for it in items]),
            valid=torch.stack([it["valid"] for it in items]),
        )
        if any(it["categories"] is not None for it in items):
            size = items[0]["mask"].shape[-1]
            unlabelled = torch.full((size, size), -1, dtype=torch.long)
            batch.categories = torch.stack(
                [it["categories"] if it["categories"] is not None else unlabelled for it in items]
            )
        target_categories = [it["target_category"] for it in items]
        if max(target_categories) >= 0:
            batch.target_categories = torch.tensor(target_categories, dtype=torch.long)
        return Collated(
            batch=batch,
            indices=[it["index"] for it in items],
            boxes=[it["box"] for it in items],
            views=[it["view"] for it in items],
            targets=[it.get("target") for it in items],
        )


@dataclass
class Collated:
    """A model batch with the per-item facts the engine needs beside it."""

    batch: "Batch"
    indices: list[int]
    boxes: list[Letterbox]
    views: list[tuple[str, bool] | None]
    targets: list[np.ndarray | None]
