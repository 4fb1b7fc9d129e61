"""COCO instances, COCO panoptic (things and stuff) and COCO captions → :class:`ImageRegions`.

Layout (as released by COCO)::

    ROOT/annotations/instances_<split><year>.json      polygons / RLE, iscrowd
    ROOT/annotations/panoptic_<split><year>.json + panoptic_<split><year>/<image>.png
    ROOT/annotations/captions_<split><year>.json       optional, 5 captions per image
    ROOT/images/<split><year>/<file_name>

Every region (instance or panoptic segment) becomes a :class:`Region` with a boolean mask;
crowd regions are kept (so expression synthesis knows about them) but flagged with
``iscrowd`` and left out of :attr:`ImageRegions.targets`. :func:`region_samples` turns an
image's regions into :class:`RefSample` s, by category name or by synthesized expressions.
:func:`iter_instances` / :func:`iter_panoptic` are the function forms of the readers.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from refseg.data.annotations import (
    INSTANCE_KEYS, PANOPTIC_KEYS, check_coco, check_photo_size, check_polygons, check_rle, read_json,
)
from refseg.data.images import load_label_map
from refseg.data.masks import encode_rle
from refseg.data.sample import RefSample, Region, SampleMeta
from refseg.errors import ConfigError


@dataclass
class ImageRegions:
    """One photo with all its annotated regions (and captions, when the dataset has them)."""

    image_id: str
    path: Path
    width: int
    height: int
    regions: list[Region]
    captions: list[str] = field(default_factory=list)
    split: str | None = None
    source: str = ""

    @property
    def targets(self) -> list[Region]:
        """Regions that may be referred to: everything but crowd regions."""
        return [r for r in self.regions if not r.iscrowd]


def segmentation_rle(segmentation: Any, height: int, width: int) -> dict:
    """A COCO ``segmentation`` (polygons, compressed or uncompressed RLE, or a list of RLEs) as one
    compressed RLE dict with ``counts`` as str (JSON-ready, accepted by ``decode_mask``)."""
    if isinstance(segmentation, dict):
        parts = [segmentation]
    elif isinstance(segmentation, list) and segmentation and all(isinstance(p, list) for p in segmentation):
        polygons = check_polygons(segmentation, height, width)
        if not polygons:  # only degenerate polygons: no pixel
            return encode_rle(np.zeros((height, width), dtype=bool))
        parts = mask_utils.frPyObjects(polygons, height, width)
    elif isinstance(segmentation, list) and segmentation and all(isinstance(p, dict) for p in segmentation):
        parts = list(segmentation)
    else:
        raise ConfigError(f"unsupported segmentation of type {type(segmentation).__name__}")
    rles = []
    for part in parts:
        check_rle(part, height, width)
        counts = part["counts"]
        if isinstance(counts, list):  # uncompressed RLE
            part = mask_utils.frPyObjects(part, height, width)
        elif isinstance(counts, str):
            part = {"size": part["size"], "counts": counts.encode("ascii")}
        rles.append(part)
    merged = mask_utils.merge(rles) if len(rles) > 1 else rles[0]
    return {"size": [int(s) for s in merged["size"]], "counts": merged["counts"].decode("ascii")}


def load_captions(path: str | Path) -> dict[int, list[str]]:
    """COCO ``captions_*.json`` as {image id: [caption, ...]} (stripped, in file order)."""
    data = read_json(Path(path), "captions file")
    check_coco(data, f"captions file {path}", {"image_id": int, "caption": str})
    captions: dict[int, list[str]] = {}
    for ann in data.get("annotations", []):
        captions.setdefault(ann["image_id"], []).append(ann["caption"].strip())
    return captions


class _CocoReader:
    """Shared part of the COCO readers: image index, categories, captions, image paths."""

    kind = ""
    annotation_keys: dict[str, type] = INSTANCE_KEYS

    def __init__(
        self,
        root: str | Path,
        split: str = "val",
        year: str = "2017",
        images: str | Path | None = None,
        captions: str | Path | None = None,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.name = f"{split}{year}"
        self.image_dir = Path(images) if images else self.root / "images" / self.name
        path = self.root / "annotations" / f"{self.kind}_{self.name}.json"
        self.data = read_json(path, f"COCO {self.kind} file")
        check_coco(self.data, f"COCO {self.kind} file {path}", self.annotation_keys)
        self.categories: dict[int, dict] = {int(c["id"]): c for c in self.data.get("categories", [])}
        self.images: list[dict] = sorted(self.data.get("images", []), key=lambda im: int(im["id"]))
        default_captions = self.root / "annotations" / f"captions_{self.name}.json"
        captions_path = Path(captions) if captions else default_captions
        self.captions = load_captions(captions_path) if captions or default_captions.is_file() else {}
        self.source = f"coco-{self.kind}-{self.name}"

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self) -> Iterator[ImageRegions]:
        return self.iter_images()

    def iter_images(self) -> Iterator[ImageRegions]:
        """One :class:`ImageRegions` per image, in image-id order (images without regions too)."""
        for image in self.images:
            try:
                item = self._image_regions(image)
            except (KeyError, TypeError, ValueError) as exc:
                raise ConfigError(f"{self.source}: malformed entry for image {image.get('id')}: {exc!r}") from None
            yield item

    def _image_regions(self, image: dict) -> ImageRegions:
        path = self.image_dir / image["file_name"]
        if not path.is_file():
            raise ConfigError(f"image not found: {path} (use --images to point at the photos)")
        height, width = image["height"], image["width"]
        check_photo_size(path, height, width, f"image {image['id']}")
        return ImageRegions(
            image_id=str(image["id"]),
            path=path,
            width=width,
            height=height,
            regions=self._regions(image, height, width),
            captions=self.captions.get(int(image["id"]), []),
            split=self.split,
            source=self.source,
        )

    def _regions(self, image: dict, height: int, width: int) -> list[Region]:
        raise NotImplementedError

    def _region(self, region_id: int, category_id: int, mask: np.ndarray, bbox, iscrowd: bool) -> Region:
        category = self.categories.get(category_id)
        if category is None:
            raise ConfigError(f"region {region_id} has unknown category id {category_id}")
        return Region(
            id=int(region_id),
            category=category["name"],
            category_id=category_id,
            mask=mask,
            bbox=tuple(float(v) for v in bbox),
            area=int(mask.sum()),
            isthing=bool(category.get("isthing", 1)),
            iscrowd=bool(iscrowd),
            meta={"supercategory": category.get("supercategory", "")},
        )


class CocoInstances(_CocoReader):
    """COCO instance annotations (thing categories; polygons, RLE, crowd regions)."""

    kind = "instances"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.annotations: dict[int, list[dict]] = {}
        for ann in self.data.get("annotations", []):
            self.annotations.setdefault(int(ann["image_id"]), []).append(ann)

    def _regions(self, image: dict, height: int, width: int) -> list[Region]:
        regions = []
        for ann in self.annotations.get(int(image["id"]), []):
            try:
                rle = segmentation_rle(ann["segmentation"], height, width)
            except ConfigError as exc:
                raise ConfigError(f"annotation {ann.get('id')}: {exc}") from None
            mask = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)
            regions.append(self._region(ann["id"], int(ann["category_id"]), mask, ann["bbox"], ann.get("iscrowd", 0)))
        return regions


class CocoPanoptic(_CocoReader):
    """COCO panoptic segmentation: things and stuff, non-overlapping segments.

    Segment ids are stored in ``annotations/panoptic_<split><year>/<image>.png`` as
    id = R + 256·G + 256²·B; ``segments_info`` gives each id's category.
    """

    kind = "panoptic"
    annotation_keys = PANOPTIC_KEYS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.png_dir = self.root / "annotations" / f"panoptic_{self.name}"
        self.annotations = {int(a["image_id"]): a for a in self.data.get("annotations", [])}

    def _regions(self, image: dict, height: int, width: int) -> list[Region]:
        ann = self.annotations.get(int(image["id"]))
        if ann is None:
            return []
        ids = self._segment_ids(self.png_dir / ann["file_name"], height, width)
        return [
            self._region(seg["id"], int(seg["category_id"]), ids == int(seg["id"]), seg["bbox"], seg.get("iscrowd", 0))
            for seg in ann["segments_info"]
        ]

    @staticmethod
    def _segment_ids(path: Path, height: int, width: int) -> np.ndarray:
        if not path.is_file():
            raise ConfigError(f"panoptic PNG not found: {path}")
        rgb = load_label_map(path, lambda im: np.asarray(im.convert("RGB"), dtype=np.int64))
        if rgb.shape[:2] != (height, width):
            raise ConfigError(f"panoptic PNG {path} is {rgb.shape[1]}x{rgb.shape[0]}, expected {width}x{height}")
        return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def iter_instances(root: str | Path, split: str = "val", **options: Any) -> Iterator[ImageRegions]:
    """The images of a COCO instances set (see :class:`CocoInstances` for ``options``)."""
    return CocoInstances(root, split, **options).iter_images()


def iter_panoptic(root: str | Path, split: str = "val", **options: Any) -> Iterator[ImageRegions]:
    """The images of a COCO panoptic set (see :class:`CocoPanoptic` for ``options``)."""
    return CocoPanoptic(root, split, **options).iter_images()


def region_samples(
    item: ImageRegions, synthesize: int = 0, rng: np.random.Generator | None = None
) -> list[RefSample]:
    """Referring samples for one image.

    With ``synthesize == 0``: one sample per category present among the targets, sentence = the
    category's everyday name (:func:`~refseg.vocabulary.clean_category`), mask = all its
    regions; categories that also have a crowd region are skipped (their extent is unknown).
    With ``synthesize = N``: up to N checked expressions from
    :func:`refseg.data.synthesis.synthesize`, mask = the union of the regions each refers to,
    no target when it refers to none.
    """
    if synthesize > 0:
        return _synthesized_samples(item, synthesize, rng or np.random.default_rng())
    from refseg.labels import clean_category

    crowded = {r.category_id for r in item.regions if r.iscrowd}
    by_category: dict[int, list[Region]] = {}
    for region in item.targets:
        if region.category_id not in crowded:
            by_category.setdefault(region.category_id, []).append(region)
    return [
        region_sample(item, f"c{category_id}", clean_category(regions[0].category), regions, "category")
        for category_id, regions in sorted(by_category.items())
    ]


def _synthesized_samples(item: ImageRegions, n: int, rng: np.random.Generator) -> list[RefSample]:
    from refseg.data.images import load_image
    from refseg.data.synthesis import synthesize

    by_id = {r.id: r for r in item.regions}
    samples = []
    for index, expression in enumerate(synthesize(item.regions, load_image(item.path), n, rng)):
        unknown = [i for i in expression.region_ids if i not in by_id]
        if unknown:
            raise ValueError(f"synthesized expression refers to unknown regions {unknown}")
        regions = [by_id[i] for i in expression.region_ids]
        samples.append(region_sample(item, f"s{index}", expression.text, regions, expression.kind))
    return samples


def region_sample(item: ImageRegions, suffix: str, sentence: str, regions: list[Region], kind: str) -> RefSample:
    """A sample whose target is the union of ``regions`` (none: no target); mask as RLE."""
    mask = encode_rle(np.logical_or.reduce([r.mask for r in regions])) if regions else None
    categories = {r.category for r in regions}
    meta = SampleMeta(
        kind=kind,
        category=categories.pop() if len(categories) == 1 and all(r.isthing for r in regions) else None,
        region_ids=[r.id for r in regions],
        image_categories=sorted({r.category for r in item.regions}),
    )
    return RefSample(
        id=f"{item.source}_{item.image_id}_{suffix}",
        image=item.path,
        sentence=sentence,
        mask=mask,
        split=item.split,
        source=item.source,
        image_id=item.image_id,
        meta=meta,
    )
