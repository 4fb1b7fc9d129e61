"""The one sample type every reader yields and every consumer takes."""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

# A target mask as stored: a decoded boolean array, a PNG path (non-zero = target),
# or a COCO RLE dict ({"size": [h, w], "counts": ...}). ``None`` means "no target".
MaskSource = Union[np.ndarray, Path, dict, None]


@dataclass
class Region:
    """One segment of an image (a COCO instance, a panoptic thing or stuff segment)."""

    id: int
    category: str
    category_id: int
    mask: np.ndarray  # bool [H, W]
    bbox: tuple[float, float, float, float]  # x, y, w, h (COCO convention)
    area: int
    isthing: bool = True
    iscrowd: bool = False  # a COCO crowd region: known to be there, never a target
    meta: dict[str, Any] = field(default_factory=dict)  # anything else the reader keeps (COCO's supercategory)


#: The :class:`SampleMeta` fields a manifest line stores (beside its ``extra`` keys).
RECORD_FIELDS = ("kind", "region_ids", "image_categories", "category", "category_id")


@dataclass
class SampleMeta:
    """What a reader knows about a sample beyond its expression and target.

    The typed fields are those the library reads; ``extra`` keeps every other key as read (a
    manifest's own keys, refer's ``ref_id`` / ``raw``, ShapeRef's ``difficulty`` …). The last two
    fields are the category supervision set when a dataset is loaded for training
    (:mod:`refseg.data.supervision`); they are not written to manifests.
    """

    kind: str | None = None  # how the expression was made: a synthesis rule, "caption", a ShapeRef kind …
    category: str | None = None  # the target's category, when it is one thing category
    category_id: int | None = None  # that category's id in its dataset (refer)
    region_ids: list[int] | None = None  # the photo's regions whose union is the target (COCO, CamVid)
    image_categories: list[str] | None = None  # every category annotated on the photo
    extra: dict[str, Any] = field(default_factory=dict)
    category_regions: list[tuple[int, dict]] | None = None  # (segmentation label, RLE) of the photo's regions
    target_category: int = -1  # segmentation label of the target (-1: none or several)

    def to_record(self) -> dict[str, Any]:
        """The JSON-ready keys a manifest line stores: the typed fields that are set, then ``extra``."""
        record = {name: getattr(self, name) for name in RECORD_FIELDS if getattr(self, name) is not None}
        return {**record, **self.extra}

    @classmethod
    def from_record(cls, record: dict[str, Any], where: str) -> "SampleMeta":
        """The inverse of :meth:`to_record` (``where`` names the line in errors)."""
        from pydantic import ValidationError

        from refseg.errors import ConfigError

        typed = {k: record[k] for k in RECORD_FIELDS if record.get(k) is not None}
        try:
            meta = _meta_adapter().validate_python(typed)
        except ValidationError as exc:
            error = exc.errors()[0]
            key = ".".join(str(part) for part in error["loc"])
            raise ConfigError(f"{where}: {key!r}: {error['msg'].lower()}") from None
        meta.extra = {k: v for k, v in record.items() if k not in RECORD_FIELDS}
        return meta


@dataclass
class RefSample:
    """An image, an expression and the mask it refers to (or no target).

    ``image`` is a path (decoded lazily) or an RGB uint8 array; ``mask`` is a
    :data:`MaskSource`. Use :meth:`load_image` / :meth:`load_mask` to get arrays.
    """

    id: str
    image: Path | np.ndarray
    sentence: str
    mask: MaskSource
    split: str | None = None
    source: str = ""
    image_id: str | None = None
    meta: SampleMeta = field(default_factory=SampleMeta)

    @property
    def has_target(self) -> bool:
        return self.mask is not None

    def load_image(self) -> np.ndarray:
        """RGB uint8 [H, W, 3], EXIF orientation applied."""
        from refseg.data.images import load_image

        return self.image if isinstance(self.image, np.ndarray) else load_image(self.image)

    def image_shape(self) -> tuple[int, int]:
        """(H, W) of :meth:`load_image`, from the file header (no decoding)."""
        from refseg.data.images import image_shape

        return image_shape(self.image)

    def load_mask(self, size: tuple[int, int] | None = None) -> np.ndarray:
        """Boolean [H, W] target; all False when there is no target.

        ``size`` (H, W) is the photo's: a target of another size is a ConfigError (training or
        scoring on the wrong geometry would be silently wrong). Without it, no check is made
        (except for no-target samples, whose empty mask takes the photo's size).
        """
        from refseg.data.masks import decode_mask
        from refseg.errors import ConfigError

        if self.mask is None and size is None:
            size = self.image_shape()
        mask = decode_mask(self.mask, size)
        if size is not None and mask.shape != tuple(size):
            raise ConfigError(
                f"sample {self.id}: its mask is {mask.shape[1]}x{mask.shape[0]} pixels but its photo is "
                f"{size[1]}x{size[0]}; masks must have the size of their photo"
            )
        return mask


@functools.cache
def _meta_adapter():
    """pydantic validator of :class:`SampleMeta` (built once: building it takes milliseconds)."""
    from pydantic import TypeAdapter

    return TypeAdapter(SampleMeta)
