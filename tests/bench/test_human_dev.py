"""The human-written dev set: its file, the loader / materialiser and the reference scores."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.human_dev import build
from refseg.data.sample import RefSample, Region, SampleMeta
from refseg.errors import ConfigError



def test_expressions_file_is_a_valid_val_only_dev_set():
    records = build.read_expressions()
    assert len(records) >= 80
    assert {r["split"] for r in records} == {"val"}
    assert len({r["id"] for r in records}) == len(records)
    assert len({(r["dataset"], r["image_id"], r["sentence"]) for r in records}) == len(records)
    assert {r["dataset"] for r in records} == set(build.DATASETS)


def _write(tmp_path: Path, *records: dict) -> Path:
    path = tmp_path / "expr.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


GOOD = {"id": "a", "dataset": "coco-instances", "split": "val", "image_id": 1, "file_name": "x.jpg",
        "sentence": "left dog", "ann_ids": [5]}


@pytest.mark.parametrize(
    "bad, message",
    [
        ({**GOOD, "dataset": "refcoco"}, "unknown dataset"),
        ({k: v for k, v in GOOD.items() if k != "sentence"}, "missing key"),
        ({**GOOD, "ann_ids": []}, "ann_ids"),
        ({**{k: v for k, v in GOOD.items() if k != "ann_ids"}, "dataset": "coco-panoptic", "ann_ids": [5]}, "segment_ids"),
    ],
)
def test_malformed_records_name_their_line(tmp_path, bad, message):
    with pytest.raises(ConfigError, match=rf"expr.jsonl:2: .*{message}"):
        build.read_expressions(_write(tmp_path, GOOD | {"id": "first"}, bad))


def test_duplicate_ids_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="duplicate id"):
        build.read_expressions(_write(tmp_path, GOOD, GOOD))


def _region(rid: int, category_id: int, mask: np.ndarray, isthing: bool = True) -> Region:
    return Region(rid, f"c{category_id}", category_id, mask, (0, 0, 1, 1), int(mask.sum()), isthing)


def _item(regions: list[Region], target_ids: list[int]) -> "build.HumanDevItem":
    targets = [r for r in regions if r.id in target_ids]
    mask = np.logical_or.reduce([r.mask for r in targets])
    sample = RefSample("-".join(map(str, target_ids)), np.zeros((*mask.shape, 3), np.uint8), "s", mask,
                       meta=SampleMeta(kind=build._kind(targets, regions)))
    return build.HumanDevItem(sample, regions, target_ids)


def test_kinds_oracle_and_whole_image_on_built_regions():
    masks = [np.zeros((4, 6), bool) for _ in range(4)]
    masks[0][0, :2] = True  # dog 1
    masks[1][1, :3] = True  # dog 2
    masks[2][3, :] = True  # grass (stuff)
    masks[3][2, 5] = True  # cat
    regions = [_region(1, 18, masks[0]), _region(2, 18, masks[1]), _region(3, 100, masks[2], False),
               _region(4, 17, masks[3])]
    dog, grass, cat, dogs = _item(regions, [1]), _item(regions, [3]), _item(regions, [4]), _item(regions, [1, 2])
    assert [dog.kind, grass.kind, cat.kind, dogs.kind] == ["disambiguate", "stuff", "unique", "set"]
    assert np.array_equal(build.category_oracle(dog), masks[0] | masks[1])
    assert np.array_equal(build.category_oracle(cat), masks[3])
    scores = build.score([dog, cat], [build.whole_image(dog), build.category_oracle(cat)])
    assert scores["all"]["n"] == 2
    assert scores["disambiguate"]["mean_iou"] == pytest.approx(2 / 24)
    assert scores["unique"]["mean_iou"] == pytest.approx(1.0)
    assert "stuff" not in scores


def test_main_skips_cleanly_without_data(tmp_path, capsys):
    assert build.main(["--data", str(tmp_path / "absent"), "--references"]) == 0
    assert "skipped" in capsys.readouterr().out


@pytest.fixture(scope="module")
def items(shared_data):
    return build.load_human_dev(shared_data)


def test_targets_decode_on_val_photos(items):
    assert len(items) == len(build.read_expressions())
    for item in items:
        sample = item.sample
        assert "val" in sample.image.parent.name
        assert sample.mask.shape == sample.load_image().shape[:2]
        assert sample.mask.any()
        assert item.kind in build.KINDS
    kinds = {item.kind for item in items}
    assert {"unique", "disambiguate", "stuff"} <= kinds


def test_oracle_contains_target_and_references_are_ordered(items):
    for item in items[:20]:
        oracle = build.category_oracle(item)
        assert not (item.sample.mask & ~oracle).any()
    table = build.reference_scores(items)
    whole, oracle = table["whole_image"]["all"], table["category_oracle"]["all"]
    expected_whole = np.mean([item.sample.mask.mean() for item in items])
    assert whole["mean_iou"] == pytest.approx(expected_whole)
    assert oracle["mean_iou"] > whole["mean_iou"]
    assert table["category_oracle"]["unique"]["mean_iou"] == pytest.approx(1.0)
    assert "| category_oracle |" in build.format_scores(table)


def test_materialised_manifest_round_trips(items, tmp_path):
    from refseg.data.manifest import read_manifest

    manifest = build.materialise(items[:5], tmp_path / "hd")
    samples = read_manifest(manifest)
    assert [s.id for s in samples] == [item.sample.id for item in items[:5]]
    for sample, item in zip(samples, items):
        assert np.array_equal(sample.load_mask(), item.sample.mask)
        assert sample.meta.kind == item.kind
    assert not list((tmp_path / "hd").rglob("*.jpg"))  # photos are referenced, never copied
