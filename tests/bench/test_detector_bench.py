"""bench/detector.py: COCOeval plumbing, recall counting, panoptic ground truth, and a short real run."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench import detector as bench
from refseg.errors import ConfigError

GT = {
    "images": [{"id": 1, "width": 100, "height": 80, "file_name": "a.jpg"}, {"id": 2, "width": 60, "height": 60, "file_name": "b.jpg"}],
    "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 50], "area": 1500, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 18, "bbox": [50, 40, 40, 30], "area": 1200, "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": 1, "bbox": [5, 5, 40, 40], "area": 1600, "iscrowd": 0},
    ],
}


def results(shift: float = 0.0, category: int | None = None) -> list[dict]:
    return [
        {"image_id": a["image_id"], "category_id": category or a["category_id"], "score": 0.9,
         "bbox": [a["bbox"][0] + shift, a["bbox"][1], a["bbox"][2], a["bbox"][3]]}
        for a in GT["annotations"]
    ]


def test_perfect_boxes_score_one_and_misplaced_ones_zero() -> None:
    assert bench.coco_ap(GT, results()) == pytest.approx((1.0, 1.0))
    assert bench.coco_ap(GT, results(shift=35.0)) == pytest.approx((0.0, 0.0))
    assert bench.coco_ap(GT, []) == (0.0, 0.0)


def test_recall_counts_class_and_any_class_hits() -> None:
    assert sorted(bench.recall_hits(GT, results(), 0.2)) == [(1, True, True, False), (1, True, True, False), (18, True, True, False)]
    wrong_class = bench.recall_hits(GT, results(category=18), 0.2)
    assert sorted(wrong_class) == [(1, False, True, False), (1, False, True, False), (18, True, True, False)]
    assert all(not found and not anything for _, found, anything, _ in bench.recall_hits(GT, results(), 0.95))
    big = {**GT, "annotations": [{**a, "area": 100 * 100} for a in GT["annotations"]]}
    assert all(large for *_, large in bench.recall_hits(big, results(), 0.2))


def test_box_iou() -> None:
    iou = bench.box_iou(np.array([[0, 0, 10, 10]], float), np.array([[0, 0, 10, 10], [5, 0, 10, 10], [20, 20, 1, 1]], float))
    np.testing.assert_allclose(iou, [[1.0, 1 / 3, 0.0]])


def test_panoptic_ground_truth_keeps_things(tmp_path: Path) -> None:
    panoptic = {
        "images": GT["images"],
        "categories": [{"id": 1, "name": "person", "isthing": 1}, {"id": 187, "name": "sky", "isthing": 0}],
        "annotations": [{"image_id": 1, "file_name": "a.png", "segments_info": [
            {"id": 7, "category_id": 1, "iscrowd": 0, "bbox": [1, 2, 3, 4], "area": 12},
            {"id": 8, "category_id": 187, "iscrowd": 0, "bbox": [0, 0, 100, 20], "area": 2000},
        ]}],
    }
    path = tmp_path / "panoptic.json"
    path.write_text(json.dumps(panoptic))
    gt = bench.ground_truth(path)
    assert [c["id"] for c in gt["categories"]] == [1]
    assert gt["annotations"] == [{"id": 7, "category_id": 1, "iscrowd": 0, "bbox": [1, 2, 3, 4], "area": 12, "image_id": 1}]


def test_detector_finds_objects_on_real_photos(shared_data) -> None:
    """Five COCO val photos at 300 px: a working detector scores far above a broken one (near 0)."""
    from refseg.data.images import load_image
    from refseg.models.detector import load_detector

    try:
        detector = load_detector()
    except ConfigError as err:
        pytest.skip(str(err))
    name, annotations, photos = bench.VAL_SETS[0]
    gt = bench.ground_truth(shared_data / annotations)
    gt["images"] = gt["images"][:5]
    gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] in {im["id"] for im in gt["images"]}]
    found = []
    for image in gt["images"]:
        rgb = load_image(shared_data / photos / image["file_name"])
        found += bench.coco_results(image["id"], detector.detect(rgb, score_threshold=bench.EVAL_THRESHOLD))
    ap, ap50 = bench.coco_ap(gt, found)
    assert 0 < ap < ap50 and ap50 > 0.3, (ap, ap50)
