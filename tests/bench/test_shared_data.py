"""bench/shared_data.py: rebuilding ../shared/data from (here: miniature) public COCO and CamVid files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench import shared_data as rebuild
from refseg.data.camvid import CamVid
from refseg.data.coco import CocoInstances, CocoPanoptic

CATEGORY = {"id": 1, "name": "dog", "supercategory": "animal", "isthing": 1}


def _photo(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 10, 3), value, np.uint8)).save(path)


def _public_coco(root: Path) -> None:
    """Two photos per split, each with one dog, in the layout of the COCO 2017 downloads."""
    for split in rebuild.SPLITS:
        images = [{"id": i, "file_name": f"{i:012d}.jpg", "height": 8, "width": 10} for i in (1, 2)]
        for image in images:
            _photo(root / f"{split}2017" / image["file_name"], 100)
            seg = np.zeros((8, 10, 3), np.uint8)
            seg[2:6, 3:7, 0] = 7  # segment id 7
            (root / "annotations" / f"panoptic_{split}2017").mkdir(parents=True, exist_ok=True)
            Image.fromarray(seg).save(root / "annotations" / f"panoptic_{split}2017" / f"{image['id']:012d}.png")
        dogs = [{"id": 10 + i, "image_id": i, "category_id": 1, "bbox": [3, 2, 4, 4], "area": 16, "iscrowd": 0,
                 "segmentation": [[3, 2, 7, 2, 7, 6, 3, 6]]} for i in (1, 2)]
        files = {
            "instances": {"images": images, "annotations": dogs, "categories": [CATEGORY]},
            "captions": {"images": images, "annotations": [{"id": 20 + i, "image_id": i, "caption": "a dog"} for i in (1, 2)]},
            "panoptic": {"images": images, "categories": [CATEGORY], "annotations": [
                {"image_id": i, "file_name": f"{i:012d}.png",
                 "segments_info": [{"id": 7, "category_id": 1, "bbox": [3, 2, 4, 4], "area": 16, "iscrowd": 0}]}
                for i in (1, 2)]},
        }
        for kind, data in files.items():
            (root / "annotations" / f"{kind}_{split}2017.json").write_text(json.dumps(data))


def _public_camvid(root: Path) -> None:
    for split in rebuild.CAMVID_SPLITS:
        _photo(root / split / "0001TP_000001.png", 50)
        (root / f"{split}annot").mkdir(parents=True)
        Image.fromarray(np.full((8, 10), 8, np.uint8)).save(root / f"{split}annot" / "0001TP_000001.png")


def test_rebuild_writes_folders_the_readers_load(tmp_path: Path) -> None:
    _public_coco(tmp_path / "coco")
    _public_camvid(tmp_path / "camvid")
    ids = tmp_path / "ids.json"
    ids.write_text(json.dumps({folder: {"train": [1], "val": [2]} for folder in rebuild.COCO_FOLDERS}))
    out = tmp_path / "shared"
    rebuild.rebuild(tmp_path / "coco", tmp_path / "camvid", out, ids)

    instances = list(CocoInstances(out / "coco-instances", "val"))
    assert [item.image_id for item in instances] == ["2"] and len(instances[0].regions) == 1
    assert CocoInstances(out / "coco-instances", "val").captions == {2: ["a dog"]}
    panoptic = list(CocoPanoptic(out / "coco-panoptic", "train"))
    assert [item.image_id for item in panoptic] == ["1"] and panoptic[0].regions[0].mask.sum() == 16
    assert (out / "camvid" / "test" / "0001TP_000001.jpg").is_file()
    assert len(list(CamVid(out / "camvid", "val"))) == 1
    assert rebuild.write_ids(out, tmp_path / "again.json") and json.loads((tmp_path / "again.json").read_text()) == json.loads(ids.read_text())


def test_rebuild_refuses_a_coco_file_without_the_photos(tmp_path: Path) -> None:
    _public_coco(tmp_path / "coco")
    ids = tmp_path / "ids.json"
    ids.write_text(json.dumps({folder: {"train": [1], "val": [99]} for folder in rebuild.COCO_FOLDERS}))
    with pytest.raises(SystemExit, match="not in this COCO file"):
        rebuild.rebuild(tmp_path / "coco", tmp_path / "camvid", tmp_path / "out", ids)


def test_committed_ids_match_the_shared_folder(shared_data: Path, tmp_path: Path) -> None:
    written = rebuild.write_ids(shared_data, tmp_path / "ids.json")
    assert json.loads(written.read_text()) == json.loads(rebuild.IDS.read_text())
