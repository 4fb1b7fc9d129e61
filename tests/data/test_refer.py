"""refer-format reader, converted through `refseg data convert refer` and checked mask by mask.

The fixture is built here in the refer API's exact layout: ROOT/refcoco/refs(unc).p (a pickled
list of ref dicts), ROOT/refcoco/instances.json (a polygon, a compressed-RLE and an
uncompressed-RLE annotation) and tiny JPEGs in ROOT/images/mscoco/images/train2014/.
"""
from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from typer.testing import CliRunner

from refseg.cli import _register_commands, app
from refseg.data.manifest import read_manifest
from refseg.data.refer import ReferDataset, load_refer, load_refs, select_split
from refseg.errors import ConfigError

SIZES = {1: (20, 30), 2: (16, 16), 3: (12, 10)}  # image id -> (height, width)


def _rect(shape, y0, y1, x0, x1):
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths over the column-major pixels, starting with zeros."""
    flat = mask.flatten(order="F").astype(np.int8)
    edges = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    runs = np.diff(edges).tolist()
    return {"size": list(mask.shape), "counts": ([0] if flat[0] else []) + runs}


EXPECTED = {
    101: _rect(SIZES[1], 2, 10, 5, 15) | _rect(SIZES[1], 15, 18, 0, 3),  # two polygons
    102: _rect(SIZES[2], 4, 12, 0, 16),  # compressed RLE
    103: _rect(SIZES[3], 0, 12, 3, 4) | _rect(SIZES[3], 5, 6, 0, 10),  # uncompressed RLE
}


def _ref(ref_id, ann_id, image_id, split, sentences, category_id=1):
    sents = [
        {"raw": s.capitalize() + ".", "sent": s, "tokens": s.split(), "sent_id": ref_id * 10 + i}
        for i, s in enumerate(sentences)
    ]
    return {
        "ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "split": split, "category_id": category_id,
        # the object's name, not the photo's: the reader must not use it as the image file
        "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",
        "sentences": sents, "sent_ids": [s["sent_id"] for s in sents],
    }


@pytest.fixture()
def refer_root(tmp_path):
    root = tmp_path / "refer"
    photos = root / "images" / "mscoco" / "images" / "train2014"
    photos.mkdir(parents=True)
    (root / "refcoco").mkdir()
    images = []
    for image_id, (h, w) in SIZES.items():
        name = f"COCO_train2014_{image_id:012d}.jpg"
        Image.fromarray(np.full((h, w, 3), 40 * image_id, np.uint8)).save(photos / name)
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
    compressed = mask_utils.encode(np.asfortranarray(EXPECTED[102].astype(np.uint8)))
    annotations = [
        {"id": 101, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [5, 2, 10, 8],
         "segmentation": [[5, 2, 15, 2, 15, 10, 5, 10], [0, 15, 3, 15, 3, 18, 0, 18]]},
        {"id": 102, "image_id": 2, "category_id": 2, "iscrowd": 0, "bbox": [0, 4, 16, 8],
         "segmentation": {"size": [16, 16], "counts": compressed["counts"].decode("ascii")}},
        {"id": 103, "image_id": 3, "category_id": 1, "iscrowd": 0, "bbox": [0, 0, 10, 12],
         "segmentation": uncompressed_rle(EXPECTED[103])},
        {"id": 104, "image_id": 1, "category_id": 2, "iscrowd": 0, "bbox": [20, 0, 10, 5],  # referred by no ref
         "segmentation": [[20, 0, 30, 0, 30, 5, 20, 5]]},
    ]
    categories = [{"id": 1, "name": "person", "supercategory": "person"}, {"id": 2, "name": "dog"}]
    (root / "refcoco" / "instances.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    refs = [
        _ref(1, 101, 1, "train", ["man on left", "guy in red"]),
        _ref(2, 102, 2, "testA", ["dog"], category_id=2),
        _ref(3, 103, 3, "testB", ["person in the middle", "  "]),  # blank sentence is skipped
        _ref(4, 101, 1, "val", ["left man"]),
    ]
    (root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    return root


def _convert(refer_root, out, *extra):
    _register_commands()
    args = ["data", "convert", "refer", "--root", str(refer_root), "--dataset", "refcoco",
            "--split-by", "unc", "--out", str(out), *extra]
    return CliRunner().invoke(app, args)


def test_convert_all_splits_mask_by_mask(refer_root, tmp_path):
    result = _convert(refer_root, tmp_path / "out")
    assert result.exit_code == 0, result.output
    samples = read_manifest(tmp_path / "out" / "refs.jsonl")
    assert [s.id for s in samples] == [
        "refcoco_unc_1_10", "refcoco_unc_1_11", "refcoco_unc_2_20", "refcoco_unc_3_30", "refcoco_unc_4_40",
    ]
    assert [s.sentence for s in samples] == ["man on left", "guy in red", "dog", "person in the middle", "left man"]
    assert [s.split for s in samples] == ["train", "train", "testA", "testB", "val"]
    for sample in samples:
        ann_id = sample.meta.extra["ann_id"]
        assert np.array_equal(sample.load_mask(), EXPECTED[ann_id]), sample.id
        assert sample.image.name == f"COCO_train2014_{int(sample.image_id):012d}.jpg"
        assert sample.load_image().shape[:2] == SIZES[int(sample.image_id)]
    assert samples[2].meta.category == "dog" and samples[0].meta.extra["raw"] == "Man on left."
    # the two sentences of ref 1 and ref 4 (same annotation) share one mask file
    assert len({s.mask for s in samples}) == 3


@pytest.mark.parametrize(
    "split, refs",
    [("testA", [2]), ("testB", [3]), ("test", [2, 3]), ("train", [1]), ("val", [4])],
)
def test_split_selection_follows_the_refer_api(refer_root, tmp_path, split, refs):
    result = _convert(refer_root, tmp_path / "out", "--split", split)
    assert result.exit_code == 0, result.output
    samples = read_manifest(tmp_path / "out" / "refs.jsonl")
    assert sorted({s.meta.extra["ref_id"] for s in samples}) == refs


def test_combined_test_splits():
    refs = [{"split": s} for s in ("testA", "testB", "testAB", "testC", "train", "val", "test")]
    assert [r["split"] for r in select_split(refs, "testA")] == ["testA", "testAB"]
    assert [r["split"] for r in select_split(refs, "testAB")] == ["testAB"]
    assert [r["split"] for r in select_split(refs, "test")] == ["testA", "testB", "testAB", "testC", "test"]
    with pytest.raises(ConfigError, match="unknown split"):
        select_split(refs, "dev")


def test_images_override_and_missing_photos(refer_root, tmp_path):
    moved = tmp_path / "photos"
    os.rename(refer_root / "images" / "mscoco" / "images" / "train2014", moved)
    with pytest.raises(ConfigError, match="image not found"):
        load_refer(refer_root, "refcoco", "unc", "val")
    samples = load_refer(refer_root, "refcoco", "unc", "val", images=moved)
    assert samples[0].image == moved / "COCO_train2014_000000000001.jpg"


def test_malicious_pickle_is_refused(refer_root, tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (refer_root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps([{"ref_id": Exploit()}]))
    with pytest.raises(ConfigError, match="refusing refs file .*only plain lists/dicts"):
        load_refer(refer_root, "refcoco", "unc")
    assert not marker.exists()
    result = _convert(refer_root, tmp_path / "out")
    assert isinstance(result.exception, ConfigError)
    assert not (tmp_path / "out" / "refs.jsonl").exists() and not marker.exists()


def _python2_pickle(value) -> bytes:
    """Protocol-0 bytes as Python 2 writes them: byte strings are ``S'...'`` with \\x escapes."""
    if isinstance(value, list):
        return b"(l" + b"".join(_python2_pickle(v) + b"a" for v in value)
    if isinstance(value, dict):
        return b"(d" + b"".join(_python2_pickle(k) + _python2_pickle(v) + b"s" for k, v in value.items())
    if isinstance(value, int):
        return b"I%d\n" % value
    escaped = "".join(c if 32 <= ord(c) < 127 and c not in "'\\" else f"\\x{ord(c):02x}" for c in value)
    return b"S'" + escaped.encode("ascii") + b"'\n"


def test_python2_pickle_with_latin1_bytes(refer_root):
    ref = _ref(1, 101, 1, "val", ["caf\xe9 on the left"])
    (refer_root / "refcoco" / "refs(unc).p").write_bytes(_python2_pickle([ref]) + b".")
    assert load_refs(refer_root / "refcoco" / "refs(unc).p") == [ref]
    (sample,) = load_refer(refer_root, "refcoco", "unc", "val")
    assert sample.sentence == "caf\xe9 on the left"


def test_corrupt_and_wrong_files(refer_root, tmp_path):
    bad = tmp_path / "bad.p"
    bad.write_bytes(b"\x80\x02garbage")
    with pytest.raises(ConfigError, match="refusing refs file"):
        load_refs(bad)
    bad.write_bytes(pickle.dumps({"not": "a list"}))
    with pytest.raises(ConfigError, match="list of refs"):
        load_refs(bad)
    bad.write_bytes(pickle.dumps([{"ref_id": 1, "ann_id": 2, "image_id": 3, "split": "val", "category_id": 1}]))
    with pytest.raises(ConfigError, match="ref #0 lacks sentences"):
        load_refs(bad)
    refs = load_refs(refer_root / "refcoco" / "refs(unc).p")
    refs[0]["sentences"][0].pop("sent_id")
    (refer_root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    with pytest.raises(ConfigError, match="malformed ref 1"):
        load_refer(refer_root, "refcoco", "unc")
    with pytest.raises(ConfigError, match="unknown refer dataset"):
        ReferDataset(refer_root, "refcocoz")
    with pytest.raises(ConfigError, match="released splitBy for refcoco: unc, google"):
        ReferDataset(refer_root, "refcoco", "umd")


def test_refer_training_samples_carry_category_supervision(refer_root):
    """The ref's category is the target category; every annotation of the photo (referred or
    not) labels the category map, in the segmentation label space of LSTM-CNN+ (COCO ids)."""
    from refseg.config import DatasetSpec
    from refseg.data.sources import read_spec
    from refseg.data.supervision import category_map
    from refseg.labels import COCO_ID_TO_SEGMENTATION

    spec = DatasetSpec(kind="refer", path=str(refer_root), dataset="refcoco", split_by="unc", split="train")
    samples = read_spec(spec, refer_root)
    person, bicycle = COCO_ID_TO_SEGMENTATION[1], COCO_ID_TO_SEGMENTATION[2]
    assert [s.meta.target_category for s in samples] == [person, person]
    labels = category_map(samples[0], SIZES[1])
    want = np.full(SIZES[1], -1)
    want[EXPECTED[101]] = person
    want[_rect(SIZES[1], 0, 5, 20, 30)] = bicycle
    assert np.array_equal(labels, want)
