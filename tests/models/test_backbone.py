"""Backbone: taps for any input size, dilation, freezing, real ImageNet weights; category names."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from refseg.errors import ConfigError
from refseg.labels import (
    CAMVID_TO_SEGMENTATION,
    COCO_PANOPTIC,
    IMAGENET_CLASSES,
    SEGMENTATION_CATEGORIES,
)
from refseg.models.backbone import Backbone


@pytest.fixture(scope="module")
def lite0() -> Backbone:
    return Backbone("efficientnet_lite0")


@pytest.mark.parametrize("output_stride", [32, 16, 8])
def test_taps_for_odd_sizes(output_stride: int) -> None:
    backbone = Backbone(pretrained=False, output_stride=output_stride)
    h, w = 67, 45
    with torch.no_grad():
        taps = backbone(torch.randn(2, 3, h, w))
    assert backbone.strides == [min(s, output_stride) for s in (4, 8, 16, 32)]
    assert [t.shape[1] for t in taps] == backbone.channels == [24, 40, 112, 1280]
    for tap, stride in zip(taps, backbone.strides):
        assert tap.shape[-2:] == (math.ceil(h / stride), math.ceil(w / stride))


def test_last_tap_block_and_other_sizes() -> None:
    backbone = Backbone("efficientnet_lite2", pretrained=False, last="block")
    assert backbone.channels[-1] == backbone.net._conv_head.in_channels != 1280
    with pytest.raises(ConfigError):
        Backbone("resnet50")
    with pytest.raises(ConfigError):
        Backbone(pretrained=False, output_stride=4)


def test_frozen_backbone_stays_in_eval_mode(lite0: Backbone) -> None:
    lite0.train()
    assert not any(m.training for m in lite0.modules())
    assert not any(p.requires_grad for p in lite0.parameters())
    trainable = Backbone(pretrained=False, freeze=False).train()
    assert trainable.training and all(p.requires_grad for p in trainable.parameters())


@pytest.mark.parametrize("stages", [1, 2, 4])
def test_partial_fine_tuning_trains_only_the_last_stages(stages: int) -> None:
    backbone = Backbone(pretrained=False, trainable_stages=stages).train()
    first_trainable = {1: 11, 2: 5, 4: 0}[stages]  # lite0: blocks 0-2 | 3-4 | 5-10 | 11-15 end the stages
    blocks = backbone.net._blocks
    assert all(p.requires_grad for b in blocks[first_trainable:] for p in b.parameters())
    assert not any(p.requires_grad for b in blocks[:first_trainable] for p in b.parameters())
    assert all(p.requires_grad for p in backbone.net._conv_head.parameters())
    assert not any(p.requires_grad for p in [*backbone.net._conv_stem.parameters(), *backbone.net._fc.parameters()])
    assert not any(m.training for m in backbone.modules())  # batch-norm statistics stay ImageNet's
    assert not backbone.fully_frozen and Backbone(pretrained=False).fully_frozen
    taps = backbone(torch.randn(1, 3, 64, 64))
    assert [tap.requires_grad for tap in taps] == [k >= 4 - stages for k in range(4)]


def test_partial_fine_tuning_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="0..4"):
        Backbone(pretrained=False, trainable_stages=5)
    with pytest.raises(ConfigError, match="freeze_backbone"):
        Backbone(pretrained=False, freeze=False, trainable_stages=1)


def test_imagenet_head_matches_the_network_classifier(lite0: Backbone) -> None:
    """Average of the per-location logits == the package's own pooled classifier (FC is linear)."""
    images = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        dense = lite0.imagenet_logits(lite0(images)[-1])
        reference = lite0.net(images)
        block_tap = Backbone(last="block")(images)[-1]
        from_block = lite0.imagenet_logits(block_tap)
    assert dense.shape == (2, 1000, 3, 4)
    torch.testing.assert_close(dense.mean(dim=(2, 3)), reference, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(from_block, dense, rtol=1e-4, atol=1e-4)


def test_classes_tap_is_the_dense_imagenet_classifier(lite0: Backbone) -> None:
    """``last="classes"`` (paper 1's fc8): the 1000 class scores at every location, fine-tuned with
    the last stages when they train."""
    classes = Backbone(last="classes")
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        tap = classes(images)[-1]
        torch.testing.assert_close(tap, lite0.imagenet_logits(lite0(images)[-1]))
        torch.testing.assert_close(classes.imagenet_logits(tap), tap)
    assert classes.channels[-1] == tap.shape[1] == 1000
    tuned = Backbone(pretrained=False, last="classes", trainable_stages=1)
    assert all(p.requires_grad for p in tuned.net._fc.parameters())
    assert not any(p.requires_grad for p in Backbone(pretrained=False, trainable_stages=1).net._fc.parameters())


@pytest.mark.parametrize("output_stride", [32, 8])
def test_hypercolumn_tap_is_the_head_with_the_resized_stride8_tap(lite0: Backbone, output_stride: int) -> None:
    """``last="hypercolumn"``: the 1280-d head output, then the stride-8 tap on the last grid; the
    ImageNet classifier still reads the head part."""
    head = Backbone(output_stride=output_stride)
    hyper = Backbone(output_stride=output_stride, last="hypercolumn")
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        plain, taps = head(images), hyper(images)
        torch.testing.assert_close(taps[-1][:, :1280], plain[-1])
        fine = F.interpolate(plain[1], size=plain[-1].shape[-2:], mode="bilinear", align_corners=False)
        torch.testing.assert_close(taps[-1][:, 1280:], fine)
        torch.testing.assert_close(hyper.imagenet_logits(taps[-1]), head.imagenet_logits(plain[-1]))
    assert hyper.channels[-1] == taps[-1].shape[1] == 1280 + 40


def test_coco_backbone_has_no_hypercolumn_tap() -> None:
    from refseg.models.backbone import CocoMobileNetV2

    with pytest.raises(ConfigError, match="hypercolumn"):
        CocoMobileNetV2(pretrained=False, last="hypercolumn")


def test_imagenet_class_names_are_the_ilsvrc_order() -> None:
    assert len(IMAGENET_CLASSES) == len(set(IMAGENET_CLASSES)) == 1000
    anchors = {0: "tench", 1: "goldfish", 207: "golden retriever", 281: "tabby", 340: "zebra",
               386: "African elephant", 504: "coffee mug", 620: "laptop", 817: "sports car",
               920: "traffic light", 954: "banana", 963: "pizza", 999: "toilet tissue"}
    assert {i: IMAGENET_CLASSES[i] for i in anchors} == anchors


def test_segmentation_categories() -> None:
    assert len(COCO_PANOPTIC) == 133 and len(SEGMENTATION_CATEGORIES) == 135
    camvid = [SEGMENTATION_CATEGORIES[i] if i >= 0 else None for i in CAMVID_TO_SEGMENTATION]
    assert camvid[0] == "sky-other-merged" and camvid[8] == "car" and camvid[9] == "person" and camvid[11] is None


def test_coco_panoptic_names_match_the_annotation_file(shared_data) -> None:
    with open(shared_data / "coco-panoptic" / "annotations" / "panoptic_val2017.json") as f:
        categories = json.load(f)["categories"]
    assert [(c["id"], c["name"]) for c in categories] == list(COCO_PANOPTIC)


def _zebra_photo(shared_data):
    from PIL import Image
    from pycocotools.coco import COCO

    root = shared_data / "coco-instances"
    coco = COCO(str(root / "annotations" / "instances_val2017.json"))
    zebra = coco.getCatIds(catNms=["zebra"])[0]
    info = coco.loadImgs(coco.getImgIds(catIds=[zebra])[0])[0]
    rgb = np.asarray(Image.open(root / "images" / "val2017" / info["file_name"]).convert("RGB"))
    mask = np.zeros(rgb.shape[:2], dtype=bool)
    for ann in coco.loadAnns(coco.getAnnIds(imgIds=info["id"], catIds=[zebra], iscrowd=None)):
        mask |= coco.annToMask(ann).astype(bool)
    return rgb, mask


def test_pretrained_weights_classify_a_real_photo(lite0: Backbone, shared_data) -> None:
    from refseg.data.transforms import letterbox, to_tensor

    rgb, mask = _zebra_photo(shared_data)
    zebra = IMAGENET_CLASSES.index("zebra")
    canvas, _ = letterbox(rgb, 224)
    with torch.no_grad():
        logits = lite0.imagenet_logits(lite0(to_tensor(canvas)[None])[-1]).mean(dim=(2, 3))[0]
    assert zebra in logits.topk(5).indices.tolist()

    # Per location at 416 px: zebra probability is high on the zebras and low elsewhere.
    canvas, box = letterbox(rgb, 416)
    with torch.no_grad():
        prob = lite0.imagenet_logits(lite0(to_tensor(canvas)[None])[-1]).softmax(dim=1)[:, zebra : zebra + 1]
    prob = F.interpolate(prob, size=(416, 416), mode="bilinear", align_corners=False)[0, 0]
    on = torch.from_numpy(box.mask(mask))
    off = torch.from_numpy(box.valid()) & ~on
    assert prob[on].mean() > 0.4
    assert prob[off].mean() < 0.2
