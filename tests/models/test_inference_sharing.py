"""Per-image work done once per photo in the LSTM-CNN family, with unchanged results.

The reference below is the computation before the split: the backbone run on every row, the
first classifier convolution over the explicit concatenation [visual; coordinates; tiled text],
and p_image computed per row. Every path the library uses (images, ``encode_image`` features
as the trainer caches them, the API's one encoding broadcast over N expressions, another
model's backbone taps) must give its outputs within 1e-5.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from refseg.api import Segmenter
from refseg.data.transforms import Letterbox, to_tensor
from refseg.models import Batch, create_model
from refseg.models.layers import add_coords, conv1x1_over_concat, l2_normalize, tile
from refseg.models.lstm_cnn_plus import probability_to_logit


SMALL = dict(output_stride=8, hidden=32, classifier=16)
SIZE = 64
TEXTS = ["the red circle", "a big blue square on the left", "zebra", "the sky"]
VARIANTS = {
    "lstm_cnn": ("lstm_cnn", {}),
    "plus-segmentation": ("lstm_cnn_plus", dict(category_source="segmentation", category_hidden=16)),
    "plus-imagenet": ("lstm_cnn_plus", dict(category_source="imagenet", category_hidden=16)),
}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def model(request) -> nn.Module:
    name, options = VARIANTS[request.param]
    torch.manual_seed(0)
    model = create_model(name, **SMALL, **options).eval()
    with torch.no_grad():  # non-zero biases and a deconvolution off its initialisation
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn_like(param))
    return model


def reference_logits(model: nn.Module, images: Tensor, tokens: Tensor, lengths: Tensor) -> Tensor:
    """Logits as computed before per-image sharing (concatenated classifier input, p_image per row)."""
    visual = model.backbone(images)[-1]
    text = model.text(tokens, lengths)
    h, w = visual.shape[-2:]
    normalised = l2_normalize(visual) * math.sqrt(visual.shape[1])
    language = tile(l2_normalize(text.sentence) * math.sqrt(text.sentence.shape[1]), h, w)
    low = model.head.classifier(torch.cat([add_coords(normalised, "2d"), language], dim=1))
    main = model.head.high_res(low, images.shape[-1])
    if model.name == "lstm_cnn":
        return main
    if model.config["category_source"] == "imagenet":
        image_logits = model.backbone.imagenet_logits(visual)
    else:
        image_logits = model.category_head(visual)
    p_text = model.text_class_logits(text).softmax(dim=-1)
    category_map = torch.einsum("bmhw,bm->bhw", image_logits.softmax(dim=1), p_text).unsqueeze(1)
    stride = model.backbone.strides[-1]
    category_map = F.interpolate(category_map, size=(h * stride, w * stride), mode="bilinear", align_corners=False)
    alpha = torch.sigmoid(model.alpha_logit)
    fused = alpha * torch.sigmoid(main) + (1 - alpha) * category_map[..., : main.shape[-2], : main.shape[-1]]
    return probability_to_logit(fused)


def close(got: Tensor, want: Tensor) -> None:
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# -------------------------------------------------------------------------------- the split conv
def test_split_conv_equals_the_conv_over_the_concatenation() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(7 + 2 + 5, 6, kernel_size=1)
    visual, coords, vector = torch.randn(3, 7, 4, 5), torch.randn(1, 2, 4, 5), torch.randn(3, 5)
    concat = torch.cat([visual, coords.expand(3, -1, -1, -1), tile(vector, 4, 5)], dim=1)
    close(conv1x1_over_concat(conv, [visual, coords, vector]), conv(concat))
    # part order follows the weight's input channels; a vector may come first
    swapped = nn.Conv2d(5 + 7 + 2, 6, kernel_size=1)
    concat = torch.cat([tile(vector, 4, 5), visual, coords.expand(3, -1, -1, -1)], dim=1)
    close(conv1x1_over_concat(swapped, [vector, visual, coords]), swapped(concat))
    for wrong in (nn.Conv2d(14, 6, kernel_size=3), nn.Conv2d(13, 6, kernel_size=1)):
        with pytest.raises(ValueError):
            conv1x1_over_concat(wrong, [visual, coords, vector])


# ---------------------------------------------------------------------------- unchanged outputs
def test_every_feature_path_matches_the_concatenated_reference(model) -> None:
    torch.manual_seed(1)
    images = torch.randn(len(TEXTS), 3, SIZE, SIZE)
    tokens, lengths = model.tokenize(TEXTS)
    with torch.no_grad():
        want = reference_logits(model, images, tokens, lengths)
        from_images = model(Batch(images, tokens, lengths))
        cached = model(Batch(None, tokens, lengths, features=model.encode_image(images), masks=images[:, :1]))
    close(from_images.logits, want)
    close(cached.logits, want)
    for key, value in from_images.extras.items():  # extras too (category maps, alpha, low-res logits)
        close(cached.extras[key], value)


def test_imagenet_source_accepts_features_without_p_image() -> None:
    """A cache shared with other models over the same backbone may hold plain backbone taps."""
    torch.manual_seed(0)
    model = create_model("lstm_cnn_plus", category_source="imagenet", category_hidden=16, **SMALL).eval()
    images = torch.randn(2, 3, SIZE, SIZE)
    tokens, lengths = model.tokenize(TEXTS[:2])
    with torch.no_grad():
        own = model.encode_image(images)
        taps = model.backbone(images)
        assert len(own) == 2 and own[-1].shape == taps[-1].shape and own[0].shape[1] == model.backbone.num_classes
        for features in (own, taps, taps[-1:]):
            out = model(Batch(images, tokens, lengths, features=features))
            close(out.logits, reference_logits(model, images, tokens, lengths))


def test_api_encodes_per_image_work_once_and_matches_each_expression(model, monkeypatch) -> None:
    seg = Segmenter(model, canvas=SIZE)
    calls = {"backbone": 0, "imagenet": 0}
    for name, owner, attr in (("backbone", model.backbone, "forward"), ("imagenet", model.backbone, "imagenet_logits")):
        original = getattr(owner, attr)

        def counted(*args, _name=name, _original=original):
            calls[_name] += 1
            return _original(*args)

        monkeypatch.setattr(owner, attr, counted)
    rgb = np.random.default_rng(0).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    predictions = seg.predict(rgb, TEXTS)
    imagenet = model.name == "lstm_cnn_plus" and model.config["category_source"] == "imagenet"
    assert calls == {"backbone": 1, "imagenet": int(imagenet)}
    monkeypatch.undo()
    canvas = to_tensor(Letterbox(SIZE, SIZE, SIZE).image(rgb)).unsqueeze(0)
    tokens, lengths = model.tokenize(TEXTS)
    with torch.no_grad():
        want = reference_logits(model, canvas.expand(len(TEXTS), -1, -1, -1), tokens, lengths)
    got = seg.runner.run(seg.runner.encode_image(canvas), tokens, lengths, TEXTS).logits
    close(got, want)
    assert len(predictions) == len(TEXTS)


# ------------------------------------------------------------------------- checkpoint compatibility
def test_parameters_and_checkpoint_exclusions_are_unchanged(model) -> None:
    names = {name for name in model.state_dict() if name.startswith("head.")}
    assert names == {"head.classifier.0.weight", "head.classifier.0.bias", "head.classifier.2.weight",
                     "head.classifier.2.bias", "head.deconv.weight", "head.deconv.bias"}
    visual_dim, text_dim = model.backbone.channels[-1], model.text.dim
    assert model.head.classifier[0].weight.shape == (SMALL["classifier"], visual_dim + 2 + text_dim, 1, 1)
    assert model.checkpoint_exclude() == ["backbone."]
