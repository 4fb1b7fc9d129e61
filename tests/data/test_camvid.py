"""CamVid: stuff regions, instance components, tiny components dropped, real label maps."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from refseg.data.camvid import CamVid, label_regions
from refseg.errors import ConfigError
from refseg.labels import CAMVID_CLASSES as CLASSES
from refseg.labels import CAMVID_UNLABELLED as UNLABELLED

SKY, ROAD, CAR, PEDESTRIAN = (CLASSES.index(n) for n in ("sky", "road", "car", "pedestrian"))


def _label_map():
    labels = np.full((100, 100), ROAD, np.uint8)
    labels[:30] = SKY
    labels[0, :5] = UNLABELLED
    labels[50:60, 10:30] = CAR  # car 1: 200 px
    labels[50:60, 40:45] = CAR  # car 2: 50 px, separate
    labels[60:65, 45:50] = CAR  # touches car 2 diagonally only -> same instance (8-connectivity)
    labels[90, 90] = CAR  # 1 px = 0.01 % of the image: dropped
    labels[70:90, 70:75] = PEDESTRIAN
    labels[40, 0:5] = SKY  # a second sky blob stays part of the single sky region
    return labels


def test_label_regions_split_instances_and_drop_tiny():
    labels = _label_map()
    regions = label_regions(labels, min_fraction=0.001)
    names = [r.category for r in regions]
    assert names == ["sky", "road", "car", "car", "pedestrian"]
    sky = regions[0]
    assert sky.area == 30 * 100 - 5 + 5 and not sky.isthing
    cars = sorted(r.area for r in regions if r.category == "car")
    assert cars == [50 + 25, 200]
    big = next(r for r in regions if r.category == "car" and r.area == 200)
    assert big.bbox == (10.0, 50.0, 20.0, 10.0) and big.isthing
    assert [r.id for r in regions] == [1, 2, 3, 4, 5]
    assert not any(r.mask[0, :5].any() for r in regions)  # unlabelled never belongs to a region
    assert len(label_regions(labels, min_fraction=0.01)) == 4  # the 75 px car goes too


def test_reader_on_a_built_folder(tmp_path):
    (tmp_path / "val").mkdir()
    (tmp_path / "valannot").mkdir()
    Image.fromarray(_label_map()).save(tmp_path / "valannot" / "f001.png")
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(tmp_path / "val" / "f001.jpg")
    reader = CamVid(tmp_path, "val")
    assert len(reader) == 1
    (item,) = list(reader)
    assert item.image_id == "f001" and item.path.name == "f001.jpg" and (item.height, item.width) == (100, 100)
    assert len(item.regions) == 5 and item.source == "camvid-val"
    (tmp_path / "val" / "f001.jpg").unlink()
    with pytest.raises(ConfigError, match="photo for f001 not found"):
        list(CamVid(tmp_path, "val"))
    with pytest.raises(ConfigError, match="unknown CamVid split"):
        CamVid(tmp_path, "dev")
    with pytest.raises(ConfigError, match="not found"):
        CamVid(tmp_path, "test")


def test_real_camvid(shared_data):
    reader = CamVid(shared_data / "camvid", "val")
    assert len(reader) == 101
    for item in list(reader)[:5]:
        labels = np.asarray(Image.open(reader.label_dir / f"{item.image_id}.png"))
        covered = np.zeros(labels.shape, int)
        for region in item.regions:
            assert region.area >= 0.001 * labels.size
            assert (labels[region.mask] == region.category_id).all()
            covered += region.mask
        assert covered.max() <= 1
        assert item.path.is_file() and (item.height, item.width) == (360, 480)
