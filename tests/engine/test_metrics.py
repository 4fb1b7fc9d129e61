"""Metrics: hand-computed cases, the no-target convention, merging, prediction folders."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image
from rich.console import Console

from refseg.data.sample import RefSample
from refseg.engine.metrics import (
    LENGTH_BUCKETS,
    MaskShapeError,
    MetricAccumulator,
    intersection_union,
    iou,
    length_bucket_labels,
    render_summary,
    score_prediction_dir,
)
from refseg.errors import ImageError, RefsegError


def box(shape, y0, y1, x0, x1):
    m = np.zeros(shape, dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def test_length_is_counted_with_the_model_tokenizer():
    acc = MetricAccumulator()
    acc.add(np.ones((2, 2), bool), np.ones((2, 2), bool), "The LEFT-hand dog, please!")
    acc.add(np.ones((2, 2), bool), np.ones((2, 2), bool), "  ")
    assert [r["n_words"] for r in acc.per_sample()] == [5, 0]


def test_intersection_union_hand_computed():
    pred = box((10, 10), 0, 4, 0, 4)  # 16 px
    gt = box((10, 10), 2, 6, 2, 6)  # 16 px, overlap 2x2 = 4
    assert intersection_union(pred, gt) == (4, 28)
    assert iou(pred, gt) == pytest.approx(4 / 28)


def test_shape_mismatch_is_a_user_error():
    with pytest.raises(MaskShapeError, match="original image resolution"):
        intersection_union(np.zeros((4, 5), bool), np.zeros((5, 4), bool))
    assert issubclass(MaskShapeError, RefsegError)


def test_no_target_convention():
    empty = np.zeros((3, 3), bool)
    some = box((3, 3), 0, 1, 0, 2)
    assert iou(empty, None) == 1.0
    assert iou(some, None) == 0.0
    assert iou(empty, empty) == 1.0  # a target without pixels is a no-target sample
    assert intersection_union(some, None) == (0, 2)


def test_target_with_empty_prediction_scores_zero():
    assert iou(np.zeros((4, 4), bool), box((4, 4), 0, 2, 0, 2)) == 0.0


def test_summary_hand_computed():
    shape = (10, 10)
    acc = MetricAccumulator(length_edges=(2, 3, 5))
    gt = box(shape, 0, 10, 0, 5)  # 50 px
    # sample a: perfect, 1 word
    assert acc.add(gt, gt, "dog") == 1.0
    # sample b: half the target, 3 words -> I=25, U=50, IoU 0.5
    acc.add(box(shape, 0, 5, 0, 5), gt, "the left dog")
    # sample c: 8 px target, prediction 8 px overlapping 4 -> I=4, U=12, IoU 1/3, 6 words
    acc.add(box(shape, 0, 2, 2, 6), box(shape, 0, 2, 0, 4), "a b c d e f")
    # sample d: no target, 3 px predicted -> IoU 0, U += 3, 2 words
    acc.add(box(shape, 9, 10, 0, 3), None, "no dog")
    # sample e: no target, empty prediction -> IoU 1
    acc.add(np.zeros(shape, bool), None, "cat")
    s = acc.summary()
    assert s["n"] == 5
    assert s["overall_iou"] == pytest.approx((50 + 25 + 4) / (50 + 50 + 12 + 3 + 0))
    assert s["mean_iou"] == pytest.approx((1 + 0.5 + 1 / 3 + 0 + 1) / 5)
    # prec@X only over the three samples with a target: IoUs 1, 0.5, 1/3
    assert s["prec@0.5"] == pytest.approx(2 / 3)
    assert s["prec@0.6"] == pytest.approx(1 / 3)
    assert s["prec@0.9"] == pytest.approx(1 / 3)
    assert s["n_no_target"] == 2 and s["no_target_accuracy"] == pytest.approx(0.5)
    by = s["by_length"]
    assert list(by) == ["1-2", "3", "4-5", "6+"]
    assert [by[k]["n"] for k in by] == [3, 1, 0, 1]
    assert by["1-2"]["mean_iou"] == pytest.approx((1 + 0 + 1) / 3)
    assert by["1-2"]["overall_iou"] == pytest.approx(50 / 53)
    assert by["3"]["prec@0.5"] == 1.0 and by["6+"]["prec@0.5"] == 0.0
    assert by["4-5"]["mean_iou"] is None and by["4-5"]["prec@0.5"] is None


def test_all_empty_predictions_and_targets():
    acc = MetricAccumulator()
    for _ in range(3):
        acc.add(np.zeros((2, 2), bool), None, "nothing here")
    s = acc.summary()
    assert s["overall_iou"] == 1.0 and s["mean_iou"] == 1.0
    assert s["prec@0.5"] is None  # no sample with a target
    empty = MetricAccumulator().summary()
    assert empty["n"] == 0 and empty["overall_iou"] is None and empty["mean_iou"] is None


def test_bucket_labels_and_validation():
    assert length_bucket_labels(LENGTH_BUCKETS["refcocog"]) == ["1-5", "6-7", "8-10", "11+"]
    assert length_bucket_labels(LENGTH_BUCKETS["refclef"]) == ["1", "2", "3-4", "5+"]
    with pytest.raises(RefsegError):
        MetricAccumulator(length_edges=(3, 2))


def test_merge_equals_single_pass_and_state_round_trips():
    rng = np.random.default_rng(0)
    samples = [
        (rng.random((6, 7)) > 0.5, (rng.random((6, 7)) > 0.6) if i % 3 else None, "w " * (i % 8 + 1))
        for i in range(20)
    ]
    whole, left, right = MetricAccumulator(), MetricAccumulator(), MetricAccumulator()
    for i, (p, g, t) in enumerate(samples):
        whole.add(p, g, t, f"s{i}")
        (left if i < 7 else right).add(p, g, t, f"s{i}")
    assert left.merge(right).summary() == whole.summary()
    restored = MetricAccumulator().load_state(whole.state())
    assert restored.summary() == whole.summary()
    assert [r["id"] for r in restored.per_sample()] == [f"s{i}" for i in range(20)]
    with pytest.raises(ValueError):
        MetricAccumulator(length_edges=(1, 2)).merge(whole)


def test_gather_without_distributed_is_identity():
    acc = MetricAccumulator()
    acc.add(np.ones((2, 2), bool), np.ones((2, 2), bool), "x")
    assert acc.gather() is acc


def test_render_summary_prints_rows():
    acc = MetricAccumulator()
    acc.add(np.ones((2, 2), bool), np.ones((2, 2), bool), "a dog")
    acc.add(np.ones((2, 2), bool), None, "no cat")
    console = Console(record=True, width=140)
    console.print(render_summary(acc.summary()))
    text = console.export_text()
    assert "overall" in text and "prec" in text and "no-target samples: 1" in text
    assert "100.00" in text and "50.00" in text  # overall IoU 4/8, mean IoU (1 + 0) / 2


masks = arrays(bool, st.tuples(st.integers(1, 6), st.integers(1, 6)))


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_iou_properties(data):
    a = data.draw(masks)
    b = data.draw(arrays(bool, a.shape))
    value = iou(a, b)
    assert 0.0 <= value <= 1.0
    assert value == pytest.approx(iou(b, a))
    assert iou(a, a) == 1.0
    inter, union = intersection_union(a, b)
    assert inter <= min(a.sum(), b.sum()) and union >= max(a.sum(), b.sum())


def _sample(tmp_path, sid, mask, size=(6, 8)):
    image = tmp_path / f"{sid}.jpg"
    Image.fromarray(np.zeros((*size, 3), np.uint8)).save(image)
    return RefSample(id=sid, image=image, sentence="the thing", mask=mask)


def test_score_prediction_dir(tmp_path):
    gt = box((6, 8), 0, 3, 0, 4)  # 12 px
    preds = tmp_path / "preds"
    preds.mkdir()
    samples = [
        _sample(tmp_path, "exact", gt),
        _sample(tmp_path, "missing", gt),
        _sample(tmp_path, "palette", gt),
        _sample(tmp_path, "none_empty", None),
        _sample(tmp_path, "none_pred", None),
    ]
    Image.fromarray(gt.astype(np.uint8) * 255).save(preds / "exact.png")
    palette = Image.fromarray(box((6, 8), 0, 3, 0, 2).astype(np.uint8), mode="P")
    palette.putpalette([0, 0, 0] * 256)  # index 1 is drawn black but is still "target"
    palette.save(preds / "palette.png")
    Image.fromarray(np.zeros((6, 8), np.uint8)).save(preds / "none_empty.png")
    Image.fromarray(box((6, 8), 0, 1, 0, 1).astype(np.uint8)).save(preds / "none_pred.png")
    ious = {r["id"]: r["iou"] for r in score_prediction_dir(samples, preds).per_sample()}
    assert ious == {"exact": 1.0, "missing": 0.0, "palette": 0.5, "none_empty": 1.0, "none_pred": 0.0}


def test_score_prediction_dir_errors(tmp_path):
    preds = tmp_path / "preds"
    preds.mkdir()
    sample = _sample(tmp_path, "s", box((6, 8), 0, 2, 0, 2))
    Image.fromarray(np.zeros((8, 6), np.uint8)).save(preds / "s.png")
    with pytest.raises(MaskShapeError, match="8x6"):
        score_prediction_dir([sample], preds)
    (preds / "s.png").write_bytes(b"not a png")
    with pytest.raises(ImageError, match="not a readable image"):
        score_prediction_dir([sample], preds)
    with pytest.raises(RefsegError, match="not found"):
        score_prediction_dir([sample], tmp_path / "nope")
    escaping = RefSample(id="../s", image=sample.image, sentence="x", mask=sample.mask)
    with pytest.raises(RefsegError, match="inside"):
        score_prediction_dir([escaping], preds)


def test_gather_merges_every_rank_in_order(monkeypatch):
    import torch.distributed as dist

    mine, theirs = MetricAccumulator(), MetricAccumulator()
    mine.add(np.ones((2, 2), bool), np.ones((2, 2), bool), "a", "rank0")
    theirs.add(np.zeros((2, 2), bool), np.ones((2, 2), bool), "b c", "rank1")

    def all_gather_object(out, state):
        out[:] = [state, theirs.state()]

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "all_gather_object", all_gather_object)
    gathered = mine.gather()
    assert [r["id"] for r in gathered.per_sample()] == ["rank0", "rank1"]
    assert gathered.summary()["mean_iou"] == pytest.approx(0.5)
    assert len(mine) == 1  # the local accumulator is left as it was
