"""Rebuild ``../shared/data`` from the public COCO 2017 and CamVid downloads.

The model card's numbers, the bundled model's training config and the human dev set read the
photo subsets of ``../shared/data``. Anyone can rebuild the same folders from the public files:

    python -m bench.shared_data rebuild --coco COCO_DIR --camvid CAMVID_DIR --out ../shared/data

``COCO_DIR`` holds the COCO 2017 downloads, unzipped: ``train2017/`` and ``val2017/`` (photos) and
``annotations/`` with ``instances_*2017.json``, ``captions_*2017.json``, ``panoptic_*2017.json`` and
the ``panoptic_*2017/`` PNG folders (unzip ``panoptic_*2017.zip`` there). ``CAMVID_DIR`` is the
``CamVid`` folder of the SegNet release: ``{train,val,test}/`` photos and ``{train,val,test}annot/``.
Which COCO photos each folder holds is listed, by image id, in ``bench/shared_data_ids.json``
(``python -m bench.shared_data ids`` regenerates it from a copy of the folder).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from PIL import Image

from bench import SHARED_DATA
from refseg.io import atomic_write_bytes

IDS = Path(__file__).resolve().with_name("shared_data_ids.json")
DEFAULT_OUT = SHARED_DATA
#: folder → the COCO annotation files it carries (per split)
COCO_FOLDERS = {
    "coco-panoptic": ("panoptic",),
    "coco-instances": ("instances", "captions"),
    "coco-instances-extra": ("instances",),
}
SPLITS = ("train", "val")
CAMVID_SPLITS = ("train", "val", "test")
CAMVID_JPEG_QUALITY = 92  # the shared copy re-encodes the SegNet PNG photos as JPEG q92


def write_ids(data: Path, out: Path = IDS) -> Path:
    """The image ids of every COCO folder and split of ``data`` → ``out`` (JSON)."""
    ids = {
        folder: {
            split: sorted(image["id"] for image in _load(data / folder / "annotations" / f"{kinds[0]}_{split}2017.json")["images"])
            for split in SPLITS
        }
        for folder, kinds in COCO_FOLDERS.items()
    }
    atomic_write_bytes(out, (json.dumps(ids, indent=1) + "\n").encode())
    return out


def rebuild(coco: Path, camvid: Path, out: Path, ids_path: Path = IDS) -> None:
    """Write the COCO subsets named by ``ids_path`` and all of CamVid under ``out``."""
    ids = _load(ids_path)
    for folder, kinds in COCO_FOLDERS.items():
        for split in SPLITS:
            keep = set(ids[folder][split])
            for kind in kinds:
                subset = _subset(_load(coco / "annotations" / f"{kind}_{split}2017.json"), keep)
                target = out / folder / "annotations" / f"{kind}_{split}2017.json"
                target.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(target, json.dumps(subset).encode())
                if kind == "panoptic":  # the segment-id PNGs
                    for ann in subset["annotations"]:
                        _copy(coco / "annotations" / f"panoptic_{split}2017" / ann["file_name"], target.with_suffix(""))
            for image in subset["images"]:
                _copy(coco / f"{split}2017" / image["file_name"], out / folder / "images" / f"{split}2017")
            print(f"{folder} {split}: {len(subset['images'])} photos")
    for split in CAMVID_SPLITS:
        photos = sorted((camvid / split).glob("*.png"))
        for photo in photos:
            (out / "camvid" / split).mkdir(parents=True, exist_ok=True)
            with Image.open(photo) as im:
                im.convert("RGB").save(out / "camvid" / split / f"{photo.stem}.jpg", quality=CAMVID_JPEG_QUALITY)
            _copy(camvid / f"{split}annot" / photo.name, out / "camvid" / f"{split}annot")
        print(f"camvid {split}: {len(photos)} photos")


def _subset(data: dict, keep: set[int]) -> dict:
    """A COCO JSON restricted to the images in ``keep`` (and their annotations); other keys as they are."""
    images = [image for image in data["images"] if image["id"] in keep]
    missing = keep - {image["id"] for image in images}
    if missing:
        sys.exit(f"error: {len(missing)} image ids (e.g. {min(missing)}) are not in this COCO file: is it COCO 2017?")
    return {**data, "images": images, "annotations": [a for a in data["annotations"] if a["image_id"] in keep]}


def _load(path: Path) -> dict:
    if not path.is_file():
        sys.exit(f"error: not found: {path} (see python -m bench.shared_data --help)")
    return json.loads(path.read_text(encoding="utf-8"))


def _copy(source: Path, folder: Path) -> None:
    if not source.is_file():
        sys.exit(f"error: not found: {source}")
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, folder / source.name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    rebuild_parser = commands.add_parser("rebuild", help="write the folders from the public downloads")
    rebuild_parser.add_argument("--coco", type=Path, required=True, help="COCO 2017 folder (photos + annotations)")
    rebuild_parser.add_argument("--camvid", type=Path, required=True, help="the SegNet release's CamVid folder")
    rebuild_parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ids_parser = commands.add_parser("ids", help="regenerate bench/shared_data_ids.json from a copy of the folder")
    ids_parser.add_argument("--data", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.command == "ids":
        print(write_ids(args.data))
    else:
        rebuild(args.coco, args.camvid, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
