"""RefCOCO, RefCOCO+, RefCOCOg (G-Ref) and RefClef (ReferIt) in the refer API's layout.

Expected layout (as distributed with the refer API)::

    ROOT/<dataset>/refs(<splitBy>).p     pickled list of refs: ref_id, ann_id, image_id, split,
                                         category_id, file_name, sentences[{raw, sent, tokens,
                                         sent_id}], sent_ids
    ROOT/<dataset>/instances.json        COCO-style images, annotations (polygons or RLE), categories
    ROOT/images/mscoco/images/train2014/ photos of refcoco, refcoco+, refcocog
    ROOT/images/saiapr_tc-12/            photos of refclef

As in the refer API, a ref's photo is ``images[ref["image_id"]]["file_name"]`` of
``instances.json`` (the ``file_name`` stored in the ref names the object, not the photo), and
its mask is the segmentation of ``ann_id`` (polygons merged). Every sentence of every ref
becomes one :class:`RefSample`; ``sent`` is the expression.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

from refseg.data.annotations import check_coco, check_photo_size, read_json
from refseg.data.coco import segmentation_rle
from refseg.data.sample import RefSample, SampleMeta
from refseg.errors import ConfigError

#: Datasets and the ``splitBy`` variants released for each.
DATASETS: dict[str, tuple[str, ...]] = {
    "refcoco": ("unc", "google"),
    "refcoco+": ("unc",),
    "refcocog": ("umd", "google"),
    "refclef": ("unc", "berkeley"),
}
#: Split names the refer API accepts (``getRefIds(split=...)``).
SPLITS = ("train", "val", "test", "testA", "testB", "testC", "testAB", "testBC", "testAC")
#: Keys every ref must have.
REF_KEYS = ("ref_id", "ann_id", "image_id", "split", "category_id", "sentences")


class _PlainDataUnpickler(pickle.Unpickler):
    """Unpickles only builtin containers and scalars: any class or function reference is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"it references {module}.{name}; only plain lists/dicts are allowed")


def load_refs(path: str | Path) -> list[dict]:
    """Load a ``refs(<splitBy>).p`` file safely (Python 2 pickles included)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"refs file not found: {path}")
    try:
        refs = _PlainDataUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, RecursionError) as exc:
        raise ConfigError(f"refusing refs file {path}: {exc}") from None
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        raise ConfigError(f"refs file {path} does not hold a list of refs")
    for index, ref in enumerate(refs):
        missing = [k for k in REF_KEYS if k not in ref]
        if missing:
            raise ConfigError(f"refs file {path}: ref #{index} lacks {', '.join(missing)}")
    return refs


def select_split(refs: list[dict], split: str | None) -> list[dict]:
    """The refs of ``split`` with the refer API's rules.

    'testA' / 'testB' / 'testC' also match the combined splits that contain the letter
    ('testAB', ...); 'test' matches every split whose name contains 'test' (testA + testB for
    RefCOCO, test for RefCOCOg); 'train', 'val' and the combined names match exactly.
    ``None`` (or "") keeps every ref.
    """
    if not split:
        return list(refs)
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    if split in ("testA", "testB", "testC"):
        return [r for r in refs if split[-1] in r["split"]]
    if split == "test":
        return [r for r in refs if "test" in r["split"]]
    return [r for r in refs if r["split"] == split]


class ReferDataset:
    """One refer-format dataset (``dataset`` + ``split_by``) as :class:`RefSample` s."""

    def __init__(
        self,
        root: str | Path,
        dataset: str = "refcoco",
        split_by: str = "unc",
        images: str | Path | None = None,
    ) -> None:
        if dataset not in DATASETS:
            raise ConfigError(f"unknown refer dataset {dataset!r}; choose from {', '.join(DATASETS)}")
        self.root = Path(root)
        self.dataset, self.split_by = dataset, split_by
        data_dir = self.root / dataset
        refs_path = data_dir / f"refs({split_by}).p"
        if not refs_path.is_file():
            raise ConfigError(
                f"refs file not found: {refs_path} (released splitBy for {dataset}: {', '.join(DATASETS[dataset])})"
            )
        self.refs = load_refs(refs_path)
        instances = read_json(data_dir / "instances.json", "refer instances file")
        check_coco(instances, f"refer instances file {data_dir / 'instances.json'}")
        self.images = {int(im["id"]): im for im in instances.get("images", [])}
        self.annotations = {int(a["id"]): a for a in instances.get("annotations", [])}
        self.image_annotations: dict[int, list[dict]] = {}
        for ann in self.annotations.values():
            self.image_annotations.setdefault(int(ann["image_id"]), []).append(ann)
        self.categories = {int(c["id"]): c["name"] for c in instances.get("categories", [])}
        default_images = "images/saiapr_tc-12" if dataset == "refclef" else "images/mscoco/images/train2014"
        self.image_dir = Path(images) if images else self.root / default_images
        self.source = f"{dataset}({split_by})"

    def samples(self, split: str | None = None, check_images: bool = True) -> list[RefSample]:
        """One sample per sentence of every ref in ``split`` (see :func:`select_split`).

        Sentences that are blank are skipped. Raises :class:`ConfigError` when a ref points to
        an image or annotation missing from ``instances.json`` or (``check_images``) a photo
        that is not on disk.
        """
        samples: list[RefSample] = []
        checked: set[Path] = set()
        for ref in select_split(self.refs, split):
            try:
                image_path, mask = self._image_and_mask(ref)
                if check_images and image_path not in checked:
                    if not image_path.is_file():
                        raise ConfigError(f"image not found: {image_path} (use --images to point at the photos)")
                    check_photo_size(image_path, *mask["size"], f"image {ref['image_id']}")
                    checked.add(image_path)
                samples += self._ref_samples(ref, image_path, mask)
            except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
                raise ConfigError(f"{self.source}: malformed ref {ref.get('ref_id')}: {exc!r}") from None
        return samples

    def _ref_samples(self, ref: dict, image_path: Path, mask: dict) -> list[RefSample]:
        samples = []
        for sentence in ref["sentences"]:
            text = str(sentence.get("sent", "")).strip()
            if not text:
                continue
            samples.append(
                RefSample(
                    id=f"{self.dataset}_{self.split_by}_{ref['ref_id']}_{sentence['sent_id']}",
                    image=image_path,
                    sentence=text,
                    mask=mask,  # one RLE dict shared by the ref's sentences
                    split=str(ref["split"]),
                    source=self.source,
                    image_id=str(ref["image_id"]),
                    meta=SampleMeta(
                        category=self.categories.get(int(ref["category_id"]), str(ref["category_id"])),
                        category_id=int(ref["category_id"]),
                        extra={
                            "ref_id": ref["ref_id"],
                            "ann_id": ref["ann_id"],
                            "sent_id": sentence["sent_id"],
                            "raw": sentence.get("raw", text),
                        },
                    ),
                )
            )
        return samples

    def image_regions(self, image_id: int) -> list[tuple[int, dict]]:
        """(category id, RLE) of every annotation of a photo in ``instances.json``."""
        image = self.images[image_id]
        h, w = int(image["height"]), int(image["width"])
        try:
            annotations = self.image_annotations.get(image_id, [])
            return [(int(a["category_id"]), segmentation_rle(a["segmentation"], h, w)) for a in annotations]
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{self.source}: malformed annotation of image {image_id}: {exc!r}") from None

    def _image_and_mask(self, ref: dict) -> tuple[Path, dict]:
        image = self.images.get(int(ref["image_id"]))
        if image is None:
            raise ConfigError(f"ref {ref['ref_id']}: image {ref['image_id']} is not in instances.json")
        ann = self.annotations.get(int(ref["ann_id"]))
        if ann is None:
            raise ConfigError(f"ref {ref['ref_id']}: annotation {ref['ann_id']} is not in instances.json")
        try:
            mask = segmentation_rle(ann["segmentation"], image["height"], image["width"])
        except ConfigError as exc:
            raise ConfigError(f"ref {ref['ref_id']}, annotation {ref['ann_id']}: {exc}") from None
        return self.image_dir / image["file_name"], mask


def load_refer(
    root: str | Path,
    dataset: str = "refcoco",
    split_by: str = "unc",
    split: str | None = None,
    images: str | Path | None = None,
) -> list[RefSample]:
    """The samples of ``split`` of a refer-format dataset (see :class:`ReferDataset`)."""
    return ReferDataset(root, dataset, split_by, images).samples(split)
