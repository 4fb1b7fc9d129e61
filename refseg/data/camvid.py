"""CamVid road scenes (SegNet release) → :class:`~refseg.data.coco.ImageRegions`.

Layout::

    ROOT/<split>/<name>.jpg (or .png)      photos, split = train | val | test
    ROOT/<split>annot/<name>.png           one class index per pixel (see :data:`refseg.labels.CAMVID_CLASSES`)

CamVid is semantic only: each stuff class becomes one region; car, pedestrian and bicyclist
are split into instances by connected components (8-connectivity). Regions (components or
stuff) smaller than ``min_fraction`` of the image are dropped; 'unlabelled' is never a region.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from skimage.measure import label

from refseg.data.coco import ImageRegions
from refseg.data.images import load_label_map
from refseg.data.sample import Region
from refseg.errors import ConfigError
from refseg.labels import CAMVID_CLASSES

#: Classes whose pixels are split into one region per connected component.
INSTANCE_CLASSES = frozenset({"car", "pedestrian", "bicyclist"})
SPLITS = ("train", "val", "test")


def label_regions(labels: np.ndarray, min_fraction: float = 0.001) -> list[Region]:
    """Regions of a CamVid label map [H, W] (class indices); ids are 1, 2, … in class order."""
    min_area = min_fraction * labels.size
    regions: list[Region] = []
    for class_id, name in enumerate(CAMVID_CLASSES):  # CAMVID_UNLABELLED is never a region
        pixels = labels == class_id
        if not pixels.any():
            continue
        if name in INSTANCE_CLASSES:
            components = label(pixels, connectivity=2)
            sizes = np.bincount(components.ravel())
            masks = [components == k for k in range(1, len(sizes)) if sizes[k] >= min_area]
        else:
            masks = [pixels]
        for mask in masks:
            area = int(mask.sum())
            if area < min_area:
                continue
            regions.append(
                Region(
                    id=len(regions) + 1,
                    category=name,
                    category_id=class_id,
                    mask=mask,
                    bbox=_bbox(mask),
                    area=area,
                    isthing=name in INSTANCE_CLASSES,
                )
            )
    return regions


def _bbox(mask: np.ndarray) -> tuple[float, float, float, float]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)


class CamVid:
    """One split of CamVid as :class:`ImageRegions`, in file-name order."""

    def __init__(self, root: str | Path, split: str = "train", min_fraction: float = 0.001) -> None:
        if split not in SPLITS:
            raise ConfigError(f"unknown CamVid split {split!r}; choose from {', '.join(SPLITS)}")
        self.root = Path(root)
        self.split = split
        self.min_fraction = min_fraction
        self.label_dir = self.root / f"{split}annot"
        self.image_dir = self.root / split
        if not self.label_dir.is_dir():
            raise ConfigError(f"CamVid label folder not found: {self.label_dir}")
        self.label_paths = sorted(self.label_dir.glob("*.png"))
        self.source = f"camvid-{split}"

    def __len__(self) -> int:
        return len(self.label_paths)

    def __iter__(self) -> Iterator[ImageRegions]:
        return self.iter_images()

    def iter_images(self) -> Iterator[ImageRegions]:
        for label_path in self.label_paths:
            image_path = self._photo(label_path.stem)
            labels = load_label_map(label_path, np.asarray)
            if labels.ndim != 2:
                raise ConfigError(f"CamVid label map {label_path} is not single-channel")
            yield ImageRegions(
                image_id=label_path.stem,
                path=image_path,
                width=int(labels.shape[1]),
                height=int(labels.shape[0]),
                regions=label_regions(labels, self.min_fraction),
                split=self.split,
                source=self.source,
            )

    def _photo(self, stem: str) -> Path:
        for suffix in (".jpg", ".png"):
            path = self.image_dir / f"{stem}{suffix}"
            if path.is_file():
                return path
        raise ConfigError(f"CamVid photo for {stem} not found in {self.image_dir}")


def iter_camvid(root: str | Path, split: str = "train", min_fraction: float = 0.001) -> Iterator[ImageRegions]:
    """The images of one CamVid split (see :class:`CamVid`)."""
    return CamVid(root, split, min_fraction).iter_images()
