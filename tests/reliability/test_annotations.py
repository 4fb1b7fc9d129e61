"""Class 2 of issue 24: annotations and target masks are untrusted input.

Hostile COCO / refer annotation files, JSONL manifests and mask files give one line and exit 2
(``ConfigError`` / ``ImageError``), never a traceback, a crash inside pycocotools or gigabytes
of memory. The same hostile segmentations run through the COCO converter, the refer converter
and manifests, because one validator (``refseg.data.annotations``) guards all of them.
"""
from __future__ import annotations

import json
import os
import pickle
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools import mask as mask_utils

from refseg.data.annotations import check_rle
from refseg.data.coco import segmentation_rle
from refseg.data.masks import decode_mask, encode_rle
from refseg.errors import ConfigError, RefsegError
from tests.fixtures.contracts import assert_one_line_error
from tests.fixtures.photos import encode, eps_file, png_claiming_size

SIZE = 100  # photos are SIZE x SIZE
SQUARE = [[10, 10, 60, 10, 60, 60, 10, 60]]

# name -> (segmentation, phrase of the error)
HOSTILE_SEGMENTATIONS = {
    "polygon_at_1e9": ([[10, 10, 1e9, 10, 60, 60]], "far outside"),
    "polygon_at_1e12": ([[10, 10, 1e12, 1e12, 60, 60]], "far outside"),
    "polygon_at_3e7": ([[10, 10, 3e7, 10, 60, 3e7]], "far outside"),
    "polygon_at_minus_1e9": ([[-1e9, 10, 60, 10, 60, 60]], "far outside"),
    "polygon_odd_length": ([[10, 10, 60, 10, 60]], "odd number"),
    "polygon_with_text": ([[10, 10, "60", 10, 60, 60]], "list of numbers"),
    "polygon_with_bool": ([[10, 10, True, 10, 60, 60]], "list of numbers"),
    "polygon_nested": ([[[10, 10], [60, 10], [60, 60]]], "list of numbers"),
    "rle_negative_counts": ({"size": [SIZE, SIZE], "counts": [-5, SIZE * SIZE + 5]}, "non-negative"),
    "rle_counts_too_long": ({"size": [SIZE, SIZE], "counts": [0, SIZE * SIZE * 100]}, "add up to"),
    "rle_counts_too_short": ({"size": [SIZE, SIZE], "counts": [0, 5]}, "add up to"),
    "rle_huge_size": ({"size": [100000, 100000], "counts": [0, 10**10]}, "too large"),
    "rle_other_size": ({"size": [50, 50], "counts": [0, 2500]}, "on an image of size"),
    "rle_string_garbage": ({"size": [SIZE, SIZE], "counts": "\x7f\x7f~~~"}, "outside its alphabet"),
    "rle_string_overrun": ({"size": [SIZE, SIZE], "counts": "0ooooooooo8"}, "RLE"),
    "rle_string_cut": ({"size": [SIZE, SIZE], "counts": "o"}, "ends in the middle"),
    "rle_string_not_ascii": ({"size": [SIZE, SIZE], "counts": "0é" * 3}, "outside its alphabet"),
    "rle_float_counts": ({"size": [SIZE, SIZE], "counts": [0.5, SIZE * SIZE - 0.5]}, "must be an integer"),
    "rle_without_counts": ({"size": [SIZE, SIZE]}, "counts"),
    "not_a_segmentation": ("polygon", "unsupported segmentation"),
}

# name -> (edit of the COCO dict or raw bytes of the file, phrase of the error)
HOSTILE_COCO_FILES = {
    "claimed_size_40000": (lambda d: d["images"][0].update(width=40000, height=40000), "too large"),
    "claimed_size_other_than_the_photo": (lambda d: d["images"][0].update(width=200, height=150), "but its photo"),
    "claimed_size_zero": (lambda d: d["images"][0].update(width=0), "empty size"),
    "image_id_text": (lambda d: d["images"][0].update(id="one"), "must be an integer"),
    "image_id_float": (lambda d: d["images"][0].update(id=1.5), "must be an integer"),
    "image_without_id": (lambda d: d["images"][0].pop("id"), "has no 'id'"),
    "annotation_without_id": (lambda d: d["annotations"][0].pop("id"), "has no 'id'"),
    "annotation_without_category": (lambda d: d["annotations"][0].pop("category_id"), "has no 'category_id'"),
    "images_not_a_list": (lambda d: d.update(images={"a": 1}), "must be a list"),
    "image_not_an_object": (lambda d: d["images"].append(7), "must be an object"),
    "id_infinity": (lambda d: json.dumps(d).replace('"id": 1,', '"id": Infinity,', 1).encode(), "Infinity is not a valid JSON number"),
    "id_nan": (lambda d: json.dumps(d).replace('"id": 1,', '"id": NaN,', 1).encode(), "NaN is not a valid JSON number"),
    "top_level_list": (lambda d: json.dumps([d]).encode(), "must hold a JSON dict"),
    "deeply_nested": (lambda d: ("[" * 100000 + "]" * 100000).encode(), "nested too deeply"),
    "invalid_utf8": (lambda d: b'{"images": ["\xff\xfe"]}', "not UTF-8"),
    "empty_file": (lambda d: b"", "not valid JSON"),
    "truncated": (lambda d: json.dumps(d).encode()[:50], "not valid JSON"),
}


def _photo(folder: Path, name: str = "a.png") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((SIZE, SIZE, 3), 90, np.uint8)).save(folder / name)
    return folder / name


def _coco(segmentation=None) -> dict:
    return {
        "images": [{"id": 1, "file_name": "a.png", "width": SIZE, "height": SIZE}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 18, "iscrowd": 0, "bbox": [10, 10, 50, 50],
                         "segmentation": SQUARE if segmentation is None else segmentation}],
        "categories": [{"id": 18, "name": "dog", "supercategory": "animal"}],
    }


def _coco_root(tmp_path: Path, content: dict | bytes) -> Path:
    root = tmp_path / "coco"
    _photo(root / "images" / "val2017")
    (root / "annotations").mkdir(parents=True)
    data = content if isinstance(content, bytes) else json.dumps(content).encode()
    (root / "annotations" / "instances_val2017.json").write_bytes(data)
    return root


def _refer_root(tmp_path: Path, segmentation) -> Path:
    root = tmp_path / "refer"
    _photo(root / "images" / "mscoco" / "images" / "train2014")
    (root / "refcoco").mkdir(parents=True)
    (root / "refcoco" / "instances.json").write_text(json.dumps(_coco(segmentation)))
    ref = {"ref_id": 1, "ann_id": 1, "image_id": 1, "split": "val", "category_id": 18,
           "sentences": [{"sent": "the dog", "raw": "the dog", "sent_id": 1, "tokens": ["the", "dog"]}]}
    (root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps([ref], protocol=2))
    return root


def _convert_coco(cli, root: Path, out: Path):
    return cli("data", "convert", "coco-instances", "--root", root, "--split", "val", "--out", out)


def _convert_refer(cli, root: Path, out: Path):
    return cli("data", "convert", "refer", "--root", root, "--dataset", "refcoco", "--out", out)


def test_the_fixtures_convert(cli, tmp_path) -> None:
    """The unedited fixtures are valid: every hostile case below differs from them in one edit."""
    assert _convert_coco(cli, _coco_root(tmp_path, _coco()), tmp_path / "o1")[0] == 0
    assert _convert_refer(cli, _refer_root(tmp_path, SQUARE), tmp_path / "o2")[0] == 0


@pytest.mark.parametrize("name", sorted(HOSTILE_SEGMENTATIONS))
def test_coco_converter_refuses_hostile_segmentations(cli, tmp_path, name) -> None:
    segmentation, phrase = HOSTILE_SEGMENTATIONS[name]
    tracemalloc.start()
    try:
        code, _, err = _convert_coco(cli, _coco_root(tmp_path, _coco(segmentation)), tmp_path / "out")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert_one_line_error(code, err, phrase)
    assert peak < 200 * 2**20


@pytest.mark.parametrize("name", sorted(HOSTILE_SEGMENTATIONS))
def test_refer_converter_refuses_hostile_segmentations(cli, tmp_path, name) -> None:
    segmentation, phrase = HOSTILE_SEGMENTATIONS[name]
    assert_one_line_error(*_convert_refer(cli, _refer_root(tmp_path, segmentation), tmp_path / "out")[::2], phrase)


@pytest.mark.parametrize("name", sorted(HOSTILE_COCO_FILES))
def test_coco_converter_refuses_hostile_files(cli, tmp_path, name) -> None:
    edit, phrase = HOSTILE_COCO_FILES[name]
    data = _coco()
    result = edit(data)
    root = _coco_root(tmp_path, result if isinstance(result, bytes) else data)
    assert_one_line_error(*_convert_coco(cli, root, tmp_path / "out")[::2], phrase)


def test_degenerate_polygons_cover_no_pixel_and_do_not_stop_the_conversion(tmp_path) -> None:
    """COCO has a few polygons of one or two points: they are dropped, the rest of the region is kept."""
    rle = segmentation_rle([[5, 5, 9, 9], SQUARE[0], [1, 2]], SIZE, SIZE)
    assert decode_mask(rle).sum() == 50 * 50
    assert not decode_mask(segmentation_rle([[5, 5, 9, 9]], SIZE, SIZE)).any()


# --------------------------------------------------------------------------- manifests and mask files


def _manifest(tmp_path: Path, mask, extra: bytes = b"") -> Path:
    folder = tmp_path / "data"
    _photo(folder)
    line = json.dumps({"id": "s1", "image": "a.png", "sentence": "the dog", "mask": mask}).encode()
    (folder / "refs.jsonl").write_bytes(line + b"\n" + extra)
    return folder / "refs.jsonl"


def _mask_file(name: str, content: bytes | None):
    def make(folder: Path) -> str:
        if content is None:
            os.mkfifo(folder / name)
        else:
            (folder / name).write_bytes(content)
        return name

    return make


def _png(h: int, w: int) -> bytes:
    return encode(Image.fromarray(np.full((h, w), 255, np.uint8)), "PNG")


# name -> (mask value or maker(folder) -> value, phrase)
HOSTILE_MASKS = {
    "path_outside_the_folder": ("../outside.png", "outside the manifest's folder"),
    "absolute_path": ("/etc/passwd", "outside the manifest's folder"),
    "fifo": (_mask_file("m.png", None), "not a regular file"),
    "eps_named_png": (_mask_file("m.png", eps_file()), "not a readable image"),
    "png_header_claiming_169_mp": (_mask_file("m.png", png_claiming_size(13000, 13000)), "too large"),
    "text_named_png": (_mask_file("m.png", b"hello"), "not a readable image"),
    "png_of_another_size": (_mask_file("m.png", _png(SIZE, SIZE // 2)), "masks must have the size of their photo"),
    "rle_of_another_size": (encode_rle(np.ones((SIZE // 2, SIZE), bool)), "masks must have the size of their photo"),
    **{f"rle_{k}": (v[0], v[1]) for k, v in HOSTILE_SEGMENTATIONS.items()
       if k.startswith("rle_") and k not in ("rle_other_size", "rle_without_counts")},
}


@pytest.mark.parametrize("name", sorted(HOSTILE_MASKS))
def test_eval_refuses_hostile_target_masks(cli, tmp_path, name) -> None:
    value, phrase = HOSTILE_MASKS[name]
    (tmp_path / "data").mkdir()
    mask = value(tmp_path / "data") if callable(value) else value
    manifest = _manifest(tmp_path, mask)
    preds = tmp_path / "preds"
    preds.mkdir()
    assert_one_line_error(*cli("eval", "--data", manifest, "--pred-dir", preds)[::2], phrase)


def test_training_refuses_a_mask_of_another_size_than_its_photo(tmp_path) -> None:
    from refseg.data.dataset import RefDataset
    from refseg.data.manifest import read_manifest

    (tmp_path / "data").mkdir()
    manifest = _manifest(tmp_path, HOSTILE_MASKS["png_of_another_size"][0](tmp_path / "data"))
    with pytest.raises(ConfigError, match=r"its mask is 50x100 pixels but its photo is 100x100"):
        RefDataset(read_manifest(manifest), 64)[0]


MANIFEST_LINES = {
    "invalid_utf8": (b'{"id": "\xff"}', "not UTF-8"),
    "deeply_nested": (b"[" * 100000 + b"]" * 100000, "nested too deeply"),
    "nan": (b'{"id": NaN}', "NaN is not a valid JSON number"),
    "top_level_list": (b"[1, 2]", "expected a JSON object"),
}


@pytest.mark.parametrize("name", sorted(MANIFEST_LINES))
def test_manifest_reader_refuses_hostile_lines(cli, tmp_path, name) -> None:
    line, phrase = MANIFEST_LINES[name]
    manifest = _manifest(tmp_path, None, extra=line + b"\n")
    preds = tmp_path / "preds"
    preds.mkdir()
    code, _, err = cli("eval", "--data", manifest, "--pred-dir", preds)
    assert_one_line_error(code, err, phrase)
    assert "line 2" in err


def test_manifest_writer_copies_masks_from_outside_so_its_manifest_reads_back(tmp_path) -> None:
    from refseg.data.manifest import read_manifest, write_manifest
    from refseg.data.sample import RefSample

    photo = _photo(tmp_path / "elsewhere")
    outside = tmp_path / "elsewhere" / "m.png"
    outside.write_bytes(_png(SIZE, SIZE))
    manifest = write_manifest([RefSample("s", photo, "x", outside)], tmp_path / "out")
    (sample,) = read_manifest(manifest)
    assert (tmp_path / "out").resolve() in sample.mask.resolve().parents
    assert sample.load_mask((SIZE, SIZE)).all()


# --------------------------------------------------------------------------- properties


@settings(max_examples=300, deadline=None)
@given(
    size=st.lists(st.integers(-3, 12), min_size=2, max_size=2),
    counts=st.one_of(st.lists(st.integers(-5, 150), max_size=8), st.text(max_size=12)),
)
def test_any_rle_decodes_to_its_size_or_is_a_one_line_error(size, counts) -> None:
    rle = {"size": size, "counts": counts}
    try:
        mask = decode_mask(rle)
    except RefsegError as exc:
        assert "\n" not in str(exc)
        return
    assert mask.shape == tuple(size) and mask.dtype == bool


@settings(max_examples=200, deadline=None)
@given(
    h=st.integers(1, 12), w=st.integers(1, 12), data=st.data(),
)
def test_compressed_rle_strings_are_read_exactly(h, w, data) -> None:
    """The checker reads pycocotools' own strings: they pass, and decode to the original mask."""
    bits = data.draw(st.lists(st.booleans(), min_size=h * w, max_size=h * w))
    mask = np.array(bits, dtype=bool).reshape(h, w)
    rle = encode_rle(mask)
    assert check_rle(rle) == (h, w)
    assert (decode_mask(rle) == mask).all()
    assert (mask_utils.decode({"size": [h, w], "counts": rle["counts"].encode()}) == mask).all()


coordinates = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**13, 10**13), st.floats(-300, 300)
)


@settings(max_examples=300, deadline=None)
@given(polygons=st.lists(st.lists(coordinates, max_size=10), min_size=1, max_size=3))
def test_any_polygon_rasterises_within_the_image_or_is_a_one_line_error(polygons) -> None:
    try:
        rle = segmentation_rle(polygons, SIZE, SIZE)
    except RefsegError as exc:
        assert "\n" not in str(exc)
        return
    assert decode_mask(rle).shape == (SIZE, SIZE)
