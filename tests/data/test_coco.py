"""COCO readers: segmentation decoding, category samples, and the real COCO subsets."""
from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass
from itertools import islice

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from refseg.data.coco import (
    CocoInstances,
    CocoPanoptic,
    ImageRegions,
    region_samples,
    segmentation_rle,
)
from refseg.data.masks import decode_mask
from refseg.data.sample import Region, SampleMeta
from refseg.errors import ConfigError


def test_segmentation_kinds_decode_to_the_drawn_mask():
    h, w = 6, 8
    expected = np.zeros((h, w), bool)
    expected[1:4, 2:6] = True
    other = np.zeros((h, w), bool)
    other[5, 0] = True
    # polygons on pixel boundaries (COCO convention): a 4x3 rectangle and a 1-pixel square
    polygons = [[2, 1, 6, 1, 6, 4, 2, 4], [0, 5, 1, 5, 1, 6, 0, 6]]
    assert np.array_equal(decode_mask(segmentation_rle(polygons, h, w), (h, w)), expected | other)
    compressed = mask_utils.encode(np.asfortranarray(expected.astype(np.uint8)))
    assert np.array_equal(decode_mask(segmentation_rle(compressed, h, w), (h, w)), expected)
    as_text = {"size": [h, w], "counts": compressed["counts"].decode("ascii")}
    assert np.array_equal(decode_mask(segmentation_rle(as_text, h, w), (h, w)), expected)
    column_major = expected.flatten(order="F")
    runs, current, count = [], False, 0
    for value in column_major:
        if value != current:
            runs.append(count)
            current, count = value, 0
        count += 1
    runs.append(count)
    uncompressed = {"size": [h, w], "counts": runs}
    assert np.array_equal(decode_mask(segmentation_rle(uncompressed, h, w), (h, w)), expected)
    both = [as_text, {"size": [h, w], "counts": mask_utils.encode(np.asfortranarray(other.astype(np.uint8)))["counts"]}]
    assert np.array_equal(decode_mask(segmentation_rle(both, h, w), (h, w)), expected | other)
    with pytest.raises(ConfigError, match="size"):
        segmentation_rle(as_text, h + 1, w)
    with pytest.raises(ConfigError, match="unsupported"):
        segmentation_rle("x", h, w)


def _region(rid, category, cid, mask, crowd=False):
    return Region(rid, category, cid, mask, (0, 0, 1, 1), int(mask.sum()), iscrowd=crowd)


def _item(tmp_path):
    shape = (4, 5)
    masks = [np.zeros(shape, bool) for _ in range(4)]
    masks[0][0, 0] = masks[1][3, 4] = masks[2][1:3, 1:3] = masks[3][0, 4] = True
    path = tmp_path / "img.jpg"
    Image.fromarray(np.zeros((*shape, 3), np.uint8)).save(path)
    regions = [
        _region(1, "dog", 18, masks[0]),
        _region(2, "dog", 18, masks[1]),
        _region(3, "person", 1, masks[2]),
        _region(4, "person", 1, masks[3], crowd=True),
    ]
    return ImageRegions("7", path, 5, 4, regions, split="val", source="test"), masks


def test_category_samples_union_instances_and_skip_crowded(tmp_path):
    item, masks = _item(tmp_path)
    assert [r.id for r in item.targets] == [1, 2, 3]
    samples = region_samples(item)
    assert [s.sentence for s in samples] == ["dog"]  # 'person' has a crowd region
    assert np.array_equal(samples[0].load_mask(), masks[0] | masks[1])
    assert samples[0].id == "test_7_c18"
    assert samples[0].meta == SampleMeta(kind="category", category="dog", region_ids=[1, 2],
                                         image_categories=["dog", "person"])


def test_synthesized_samples_use_the_synthesis_function(tmp_path, monkeypatch):
    item, masks = _item(tmp_path)

    @dataclass
    class Expression:
        text: str
        region_ids: list
        kind: str = "spatial"

    calls = []

    def synthesize(regions, image, n, rng):
        calls.append((len(regions), image.shape, n))
        return [Expression("the left dog", [1]), Expression("both dogs", [1, 2]), Expression("a cat", [])]

    monkeypatch.setitem(sys.modules, "refseg.data.synthesis", types.SimpleNamespace(synthesize=synthesize))
    samples = region_samples(item, synthesize=3, rng=np.random.default_rng(0))
    assert calls == [(4, (4, 5, 3), 3)]
    assert [s.sentence for s in samples] == ["the left dog", "both dogs", "a cat"]
    assert np.array_equal(samples[1].load_mask(), masks[0] | masks[1])
    assert samples[0].meta.kind == "spatial" and samples[0].meta.category == "dog"
    assert samples[2].mask is None and samples[2].id == "test_7_s2"


def test_missing_annotation_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        CocoInstances(tmp_path, split="val")


def test_real_coco_instances(shared_data):
    root = shared_data / "coco-instances"
    reader = CocoInstances(root, split="val")
    raw = json.loads((root / "annotations" / "instances_val2017.json").read_text())
    assert len(reader) == len(raw["images"])
    items = list(reader)
    regions = [r for item in items for r in item.regions]
    assert len(regions) == len(raw["annotations"])
    reference = COCO(str(root / "annotations" / "instances_val2017.json"))  # pycocotools' own decoder
    for region in regions:
        ann = reference.anns[region.id]
        assert region.iscrowd == bool(ann["iscrowd"])
        assert region.mask.dtype == bool
        assert np.array_equal(region.mask, reference.annToMask(ann) > 0)
    assert any(r.iscrowd for r in regions)
    assert all(len(item.captions) >= 5 for item in items)
    assert all(item.path.is_file() and item.regions[0].mask.shape == (item.height, item.width)
               for item in items if item.regions)


def test_real_coco_panoptic_things_and_stuff(shared_data):
    root = shared_data / "coco-panoptic"
    reader = CocoPanoptic(root, split="val")
    assert reader.captions == {}  # no captions file next to the panoptic set
    items = list(islice(reader, 15))
    for item in items:
        covered = np.zeros((item.height, item.width), int)
        for region in item.regions:
            covered += region.mask
            assert region.area > 0
        assert covered.max() <= 1  # panoptic segments never overlap
    raw = json.loads((root / "annotations" / "panoptic_val2017.json").read_text())
    by_image = {a["image_id"]: a for a in raw["annotations"]}
    for item in items:  # panoptic 'area' is the exact pixel count of each segment id
        expected = {s["id"]: s["area"] for s in by_image[int(item.image_id)]["segments_info"]}
        assert {r.id: r.area for r in item.regions} == expected
    kinds = {r.isthing for item in items for r in item.regions}
    assert kinds == {True, False}


def _cli(*args):
    from typer.testing import CliRunner

    from refseg.cli import _register_commands, app

    _register_commands()
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result


def test_cli_convert_coco_instances_by_category(shared_data, tmp_path):
    from refseg.data.manifest import read_manifest

    root = shared_data / "coco-instances"
    _cli("data", "convert", "coco-instances", "--root", str(root), "--split", "val", "--limit", "4",
         "--out", str(tmp_path))
    samples = read_manifest(tmp_path / "refs.jsonl")
    reference = COCO(str(root / "annotations" / "instances_val2017.json"))
    first_images = sorted(reference.imgs)[:4]
    assert {int(s.image_id) for s in samples} <= set(first_images) and samples
    for sample in samples:
        anns = reference.loadAnns(reference.getAnnIds(imgIds=int(sample.image_id), iscrowd=None))
        category_id = int(sample.id.rsplit("_c", 1)[1])
        same = [a for a in anns if a["category_id"] == category_id]
        assert not any(a["iscrowd"] for a in same)
        expected = np.logical_or.reduce([reference.annToMask(a) > 0 for a in same])
        assert np.array_equal(sample.load_mask(), expected), sample.id
        assert sample.sentence and sample.meta.region_ids == [a["id"] for a in same]


def test_cli_convert_coco_panoptic_synthesized(shared_data, tmp_path):
    from refseg.data.manifest import read_manifest

    root = shared_data / "coco-panoptic"
    _cli("data", "convert", "coco-panoptic", "--root", str(root), "--split", "val", "--limit", "3",
         "--synthesize", "4", "--seed", "1", "--out", str(tmp_path))
    samples = read_manifest(tmp_path / "refs.jsonl")
    regions = {(item.image_id, r.id): r for item in islice(CocoPanoptic(root, "val"), 3) for r in item.regions}
    assert 0 < len(samples) <= 12
    for sample in samples:
        ids = sample.meta.region_ids
        if not ids:
            assert sample.mask is None
            continue
        expected = np.logical_or.reduce([regions[(sample.image_id, i)].mask for i in ids])
        assert np.array_equal(sample.load_mask(), expected), sample.id
