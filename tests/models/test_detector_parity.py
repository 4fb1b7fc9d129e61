"""Parity with OpenCV's reading of the same frozen graph, on real COCO photos.

Both networks get the same resized input (TF's resize, :func:`resize_like_tf`; OpenCV's text graph
starts after the resize), so this checks everything after it: MobileNetV2, the SSD layers, the
anchors, box decoding and NMS. Same detections at score >= 0.2: same classes, scores within 1e-3,
boxes within 1 px at the photo's size (OpenCV's boxes clipped to the photo, as the TF graph does).
"""
from __future__ import annotations

import numpy as np
import pytest

from refseg.data.images import load_image
from refseg.errors import ConfigError
from refseg.models.detector import graph_path, load_detector, resize_like_tf

cv2 = pytest.importorskip("cv2", reason="OpenCV is the reference: pip install 'opencv-python-headless<5'")
THRESHOLD, SCORE_TOL, BOX_TOL = 0.2, 1e-3, 1.0
NUM_PHOTOS = 12


@pytest.fixture(scope="module")
def models():
    try:
        pb = graph_path()
    except ConfigError as err:
        pytest.skip(str(err))
    net = cv2.dnn.readNetFromTensorflow(str(pb), str(pb.parent / "ssd_mobilenet_v2_coco_2018_03_29.pbtxt"))
    return load_detector(), net


def photos(shared_data):
    found = sorted((shared_data / "coco-instances" / "images" / "val2017").glob("*.jpg"))
    if len(found) < NUM_PHOTOS:
        pytest.skip(f"need {NUM_PHOTOS} photos in coco-instances/images/val2017, found {len(found)}")
    return found[:NUM_PHOTOS]


def opencv_detections(net, rgb: np.ndarray) -> np.ndarray:
    """[N, 6]: label, score, x1, y1, x2, y2 in the photo's pixels, clipped to it."""
    net.setInput(resize_like_tf(rgb, 300).numpy())
    out = net.forward()[0, 0]
    h, w = rgb.shape[:2]
    boxes = np.clip(out[:, 3:7], 0, 1) * np.array([w, h, w, h], np.float32)
    return np.concatenate([out[:, 1:3], boxes], axis=1)


def has_match(row: np.ndarray, others: np.ndarray) -> bool:
    """Another detection with the same class, a score within 1e-3 and every box side within 1 px."""
    same = (others[:, 0] == row[0]) & (np.abs(others[:, 1] - row[1]) <= SCORE_TOL)
    return bool((same & (np.abs(others[:, 2:] - row[2:]).max(axis=1) <= BOX_TOL)).any())


def test_same_detections_as_opencv(models, shared_data) -> None:
    detector, net = models
    compared = 0
    for path in photos(shared_data):
        rgb = load_image(path)
        ours = detector.detect(rgb, size=300, score_threshold=THRESHOLD)
        theirs = opencv_detections(net, rgb)
        mine = np.concatenate([ours.labels[:, None], ours.scores[:, None], ours.boxes], axis=1)
        for row in mine:  # each of ours is one of OpenCV's ...
            assert has_match(row, theirs), f"{path.name}: ours {row} has no OpenCV counterpart"
        for row in theirs[theirs[:, 1] >= THRESHOLD + SCORE_TOL]:  # ... and OpenCV's clearly above the threshold are ours
            assert has_match(row, mine), f"{path.name}: OpenCV's {row} has no counterpart in ours"
        compared += len(mine)
    assert compared >= 3 * NUM_PHOTOS
