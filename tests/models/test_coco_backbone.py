"""The detector's COCO-trained MobileNetV2 as the backbone of every seed model (``backbone=mobilenet_v2_coco``)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from refseg.data.transforms import to_tensor
from refseg.errors import ConfigError
from refseg.models import create_model
from refseg.models.backbone import COCO_MOBILENET, CocoMobileNetV2, build_backbone
from refseg.models.detector import graph_path, load_detector
from tests.fixtures.shaperef import text_batch

SEED_MODELS = {
    "lstm_cnn": dict(hidden=16, classifier=16),
    "lstm_cnn_plus": dict(hidden=16, classifier=16, category_hidden=8),
    "per_word": dict(hidden=16, words=["red", "circle", "square"]),
    "rmi": dict(hidden=16, visual_dim=16, mlstm_hidden=8),
    "step": dict(hidden=16, visual_dim=16, attention_dim=8, embed_space_dim=8, gru_hidden=8),
}


@pytest.mark.parametrize("name", sorted(SEED_MODELS))
@pytest.mark.parametrize("output_stride", [8, 32])
def test_every_seed_model_runs_and_trains_on_it(vocab, name: str, output_stride: int) -> None:
    torch.manual_seed(0)
    options = dict(backbone=COCO_MOBILENET, pretrained=False, output_stride=output_stride, **SEED_MODELS[name])
    if name != "per_word":
        options["vocab"] = vocab
    model = create_model(name, **options)
    assert isinstance(model.backbone, CocoMobileNetV2) and model.config["backbone"] == COCO_MOBILENET
    batch = text_batch(model, ["the red circle", "a blue square"], size=67)
    out = model(batch)
    assert out.logits.shape[:2] == (2, 1) and torch.isfinite(out.logits).all()
    batch.masks = (torch.rand(2, 1, 67, 67) > 0.5).float()
    batch.valid = torch.ones_like(batch.masks)
    model.loss(out, batch).backward()
    trained = [p for p in model.parameters() if p.requires_grad]
    assert trained and all(p.grad is not None for p in trained[-2:])
    assert not any(p.requires_grad for p in model.backbone.parameters())
    rebuilt = create_model(name, **model.config)
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(batch).logits, model.eval()(batch).logits)


def test_taps_strides_and_options() -> None:
    backbone = build_backbone(COCO_MOBILENET, pretrained=False, output_stride=16, last="block")
    with torch.no_grad():
        taps = backbone(torch.randn(1, 3, 67, 45))
    assert [t.shape[1] for t in taps] == backbone.channels == [24, 32, 576, 320]
    assert backbone.strides == [4, 8, 16, 16] and backbone.head_channels == 1280
    for tap, stride in zip(taps, backbone.strides):
        assert tap.shape[-2:] == (-(-67 // stride), -(-45 // stride))
    assert backbone.head(taps[-1]).shape[1] == 1280
    for bad in (dict(output_stride=4), dict(last="middle"), dict(trainable_stages=5)):
        with pytest.raises(ConfigError):
            build_backbone(COCO_MOBILENET, pretrained=False, **bad)


@pytest.mark.parametrize("stages,first", [(1, 13), (2, 6), (4, 0)])
def test_partial_fine_tuning(stages: int, first: int) -> None:
    backbone = build_backbone(COCO_MOBILENET, pretrained=False, trainable_stages=stages).train()
    blocks = backbone.net.blocks
    assert all(p.requires_grad for b in blocks[first:] for p in b.parameters())
    assert not any(p.requires_grad for b in blocks[:first] for p in b.parameters())
    assert not any(p.requires_grad for p in backbone.net.stem.parameters())
    assert not any(m.training for m in backbone.modules()) and not backbone.fully_frozen


def test_no_imagenet_classifier_for_the_category_map(vocab) -> None:
    with pytest.raises(ConfigError, match="category_source=segmentation"):
        create_model("lstm_cnn_plus", backbone=COCO_MOBILENET, pretrained=False, vocab=vocab, category_source="imagenet")


def test_pretrained_taps_are_the_detector_features() -> None:
    """ImageNet-normalised input in, the detector's own features out (its weights, its [-1, 1] input)."""
    try:
        graph_path()
    except ConfigError as err:
        pytest.skip(str(err))
    rgb = np.random.default_rng(0).integers(0, 256, (96, 80, 3), dtype=np.uint8)
    backbone = build_backbone(COCO_MOBILENET)
    with torch.no_grad():
        ours = backbone(to_tensor(rgb)[None])
        detector = load_detector().features(torch.from_numpy(rgb).permute(2, 0, 1)[None].float() * (2 / 255) - 1)
    for a, b in zip(ours, detector):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert not backbone.training and backbone.fully_frozen
