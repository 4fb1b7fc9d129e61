"""JSONL manifest: round trip, relative paths, mask kinds, one-line errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from refseg.data.manifest import read_manifest, write_manifest
from refseg.data.masks import encode_rle
from refseg.data.sample import RefSample, SampleMeta
from refseg.errors import ConfigError


@pytest.fixture()
def photo(tmp_path):
    path = tmp_path / "photos" / "p.jpg"
    path.parent.mkdir()
    Image.fromarray(np.full((5, 7, 3), 90, np.uint8)).save(path)
    return path


def _mask(y0, y1, x0, x1, shape=(5, 7)):
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def test_round_trip(tmp_path, photo):
    left, right = _mask(0, 5, 0, 3), _mask(1, 4, 4, 7)
    array_image = np.random.default_rng(1).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    samples = [
        RefSample("a", photo, "left thing", left, split="train", image_id="p", meta=SampleMeta(category="dog")),
        RefSample("b", photo, "the left one", left.copy(), split="train", image_id="p"),
        RefSample("c", photo, "right thing", encode_rle(right), split="val", source="coco"),
        RefSample("d", photo, "a unicorn", None, split="val"),
        RefSample("e/1", array_image, "noise", right, image_id="synthetic"),
    ]
    manifest = write_manifest(samples, tmp_path / "out")
    assert manifest == tmp_path / "out" / "refs.jsonl"
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert lines[0]["image"] == "../photos/p.jpg"
    assert lines[0]["mask"] == lines[1]["mask"]  # identical masks share one PNG
    assert lines[2]["mask"] == lines[4]["mask"]  # RLE and array of the same mask too
    assert len(list((tmp_path / "out" / "masks").iterdir())) == 2
    assert lines[4]["image"] == "images/synthetic.png"
    png = np.asarray(Image.open(tmp_path / "out" / lines[2]["mask"]))
    assert set(np.unique(png)) == {0, 255}
    assert lines[3]["mask"] is None

    back = read_manifest(manifest)
    assert [s.id for s in back] == ["a", "b", "c", "d", "e/1"]
    for original, loaded in zip(samples, back):
        assert loaded.sentence == original.sentence and loaded.split == original.split
        assert np.array_equal(loaded.load_mask(), original.load_mask((5, 7)))
        assert np.array_equal(loaded.load_image(), original.load_image())  # arrays written losslessly
    assert back[0].meta == SampleMeta(category="dog") and back[0].image_id == "p"
    assert back[2].source == "coco" and back[3].has_target is False
    assert [s.id for s in read_manifest(manifest, split="val")] == ["c", "d"]


def test_rle_format_inlines_masks(tmp_path, photo):
    mask = _mask(2, 4, 1, 6)
    manifest = write_manifest([RefSample("a", photo, "x", mask)], tmp_path / "out", mask_format="rle")
    record = json.loads(manifest.read_text())
    assert record["mask"]["size"] == [5, 7]
    assert not (tmp_path / "out" / "masks").exists()
    assert np.array_equal(read_manifest(manifest)[0].load_mask(), mask)


def test_uncompressed_rle_and_absolute_paths(tmp_path, photo):
    # column-major runs for a 2x3 mask: 2 zeros, 3 ones, 1 zero
    line = {"id": "u", "image": str(photo), "sentence": "x", "mask": {"size": [2, 3], "counts": [2, 3, 1]}}
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps(line) + "\n\n")
    mask = read_manifest(manifest)[0].load_mask()
    assert mask.tolist() == [[False, True, True], [False, True, False]]


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ('["a"]', "expected a JSON object"),
        ('{"id": "b", "image": "photos/p.jpg", "sentence": "x"}', r"missing key\(s\) mask"),
        ('{"id": "b", "image": "photos/p.jpg", "sentence": "", "mask": null}', "'sentence' must be"),
        ('{"id": "b", "image": "photos/nope.jpg", "sentence": "x", "mask": null}', "image not found"),
        ('{"id": "b", "image": "photos/p.jpg", "sentence": "x", "mask": "m.png"}', "mask not found"),
        ('{"id": "b", "image": "photos/p.jpg", "sentence": "x", "mask": {"counts": "x"}}', "RLE needs"),
        ('{"id": "b", "image": "photos/p.jpg", "sentence": "x", "mask": 3}', "mask must be"),
        ('{"id": "a", "image": "photos/p.jpg", "sentence": "x", "mask": null}', "duplicate id 'a'"),
        ('{"id": "b", "image": "photos/p.jpg", "sentence": "x", "mask": null, "region_ids": "1"}',
         "'region_ids': input should be a valid list"),
        ('{"id": "b", "image": "photos/p.jpg", "sentence": "x", "mask": null, "image_categories": ["a", 3]}',
         "'image_categories.1': input should be a valid string"),
    ],
)
def test_malformed_lines_name_the_line(tmp_path, photo, content, message):
    good = '{"id": "a", "image": "photos/p.jpg", "sentence": "x", "mask": null}'
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(good + "\n" + content + "\n")
    with pytest.raises(ConfigError, match=message) as info:
        read_manifest(manifest)
    assert "m.jsonl line 2: " in str(info.value) and "\n" not in str(info.value)


def test_missing_manifest_and_unchecked_files(tmp_path):
    with pytest.raises(ConfigError, match="manifest not found"):
        read_manifest(tmp_path / "none.jsonl")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"id": "a", "image": "gone.jpg", "sentence": "x", "mask": "gone.png"}\n')
    assert read_manifest(manifest, check_files=False)[0].mask == tmp_path / "gone.png"


def test_writer_refuses_duplicate_ids(tmp_path, photo):
    with pytest.raises(ConfigError, match="duplicate"):
        write_manifest([RefSample("a", photo, "x", None), RefSample("a", photo, "y", None)], tmp_path)
    assert not (tmp_path / "refs.jsonl").exists()


def _cli(*args):
    from typer.testing import CliRunner

    from refseg.cli import _register_commands, app

    _register_commands()
    return CliRunner().invoke(app, list(args), terminal_width=200)


def test_cli_stats(tmp_path, photo):
    samples = [
        RefSample("a", photo, "dog", _mask(0, 1, 0, 1), split="train", image_id="p", meta=SampleMeta(category="dog")),
        RefSample("b", photo, "the big brown dog on the left", _mask(0, 2, 0, 2), split="train",
                  image_id="p", meta=SampleMeta(category="dog")),
        RefSample("c", photo, "a red cat", None, split="val", image_id="p", meta=SampleMeta(category="cat")),
    ]
    manifest = write_manifest(samples, tmp_path / "out")
    result = _cli("data", "stats", str(manifest), "--buckets", "refcocog")
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in result.output.splitlines() if line.count("│") >= 3}
    assert rows["train"] == ["2", "1", "0", "4.00"]  # samples, images, no target, mean words
    assert rows["val"] == ["1", "1", "1", "3.00"]
    assert rows["1-5"][0] == "2" and rows["6-7"][0] == "1" and rows["11+"][0] == "0"
    assert rows["dog"] == ["2"] and rows["cat"] == ["1"]
    bad = _cli("data", "stats", str(manifest), "--buckets", "nope")
    assert isinstance(bad.exception, ConfigError)


def test_cli_shapes(tmp_path):
    result = _cli("data", "shapes", "--n", "6", "--seed", "3", "--size", "64", "--out", str(tmp_path / "shapes"))
    assert result.exit_code == 0, result.output
    samples = read_manifest(tmp_path / "shapes" / "refs.jsonl")
    assert len(samples) == 6
    assert all(s.load_image().shape == (64, 64, 3) for s in samples)
