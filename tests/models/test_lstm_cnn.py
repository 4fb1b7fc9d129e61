"""LSTM-CNN and LSTM-CNN+, and their parts (coordinate channels, deconvolution, losses)."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from refseg.errors import ConfigError
from refseg.models import Batch, create_model
from refseg.models.layers import add_coords, bilinear_deconv, coord_channels
from refseg.models.losses import category_cross_entropy, distractor_logistic, soft_iou, weighted_bce
from refseg.models.lstm_cnn import LstmCnnHead, relative_coords
from refseg.models.lstm_cnn_plus import probability_to_logit
from tests.fixtures.shaperef import overfit, shaperef_batch

SMALL = dict(output_stride=8, hidden=64, classifier=64)


# ----------------------------------------------------------------------------------------- layers
def test_coordinates_2d_span_the_canvas() -> None:
    c = coord_channels(3, 5, "2d")
    assert c.shape == (1, 2, 3, 5)
    assert c[0, :, 0, 0].tolist() == [-1.0, -1.0] and c[0, :, -1, -1].tolist() == [1.0, 1.0]
    assert c[0, 0, :, 2].tolist() == [0.0, 0.0, 0.0]  # x of the middle column
    assert coord_channels(1, 1, "2d").flatten().tolist() == [0.0, 0.0]


def test_coordinates_8d_are_cell_boxes() -> None:
    c = coord_channels(2, 4, "8d")[0]
    x_min, y_min, x_max, y_max, x_ctr, y_ctr, inv_w, inv_h = c
    assert x_min[0].tolist() == [-1.0, -0.5, 0.0, 0.5] and x_max[0].tolist() == [-0.5, 0.0, 0.5, 1.0]
    assert y_min[:, 0].tolist() == [-1.0, 0.0] and y_max[:, 0].tolist() == [0.0, 1.0]
    torch.testing.assert_close(x_ctr, (x_min + x_max) / 2)
    torch.testing.assert_close(y_ctr, (y_min + y_max) / 2)
    assert bool((inv_w == 0.25).all()) and bool((inv_h == 0.5).all())
    assert add_coords(torch.zeros(3, 7, 2, 4), "8d").shape == (3, 15, 2, 4)
    with pytest.raises(ValueError):
        coord_channels(2, 2, "3d")


@pytest.mark.parametrize("stride", [8, 32])
def test_deconvolution_starts_as_bilinear_upsampling(stride: int) -> None:
    deconv = bilinear_deconv(2, stride)
    x = torch.randn(1, 2, 5, 4)
    with torch.no_grad():
        y = deconv(x)
    assert y.shape == (1, 2, 5 * stride, 4 * stride)
    reference = F.interpolate(x, scale_factor=stride, mode="bilinear", align_corners=False)
    inner = (slice(None), slice(None), slice(stride, -stride), slice(stride, -stride))  # away from the border
    torch.testing.assert_close(y[inner], reference[inner], atol=1e-5, rtol=1e-5)


@settings(max_examples=30, deadline=None)
@given(
    stride=st.sampled_from([2, 4, 8, 16, 32]),
    channels=st.integers(1, 3),
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_stride_deconvolution_equals_transposed_convolution(stride: int, channels: int, h: int, w: int, seed: int) -> None:
    """The four-quarter evaluation gives the general transposed convolution's output and gradients
    for any (trained) kernel, not only the bilinear one it starts as."""
    torch.manual_seed(seed)
    deconv = bilinear_deconv(channels, stride)
    with torch.no_grad():
        deconv.weight.normal_()
        deconv.bias.normal_()
    x = torch.randn(2, channels, h, w, requires_grad=True)
    y = deconv(x)
    reference = F.conv_transpose2d(
        x, deconv.weight, deconv.bias, stride=stride, padding=stride // 2, groups=channels
    )
    torch.testing.assert_close(y, reference, atol=1e-4, rtol=1e-4)
    upstream = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, deconv.weight, deconv.bias), upstream)
    reference_grads = torch.autograd.grad(reference, (x, deconv.weight, deconv.bias), upstream)
    for got, want in zip(grads, reference_grads):
        torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-4)


# ----------------------------------------------------------------------------------------- losses
def test_weighted_bce_weights_and_padding() -> None:
    logits = torch.zeros(1, 1, 2, 2)
    masks = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    valid = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    # At logit 0 every pixel costs log 2: 3 log 2 on the foreground pixel, log 2 on one background pixel.
    expected = (3 * math.log(2) + math.log(2)) / 2
    assert weighted_bce(logits, masks, valid).item() == pytest.approx(expected)
    padded = logits.clone()
    padded[..., 1, :] = 50.0  # predictions on the padding do not count
    assert weighted_bce(padded, masks, valid).item() == pytest.approx(expected)
    # Targets are area-resized to the logit grid: a half-covered cell is a 0.5 target.
    half = weighted_bce(torch.zeros(1, 1, 1, 1), masks[..., :1, :], None)
    assert half.item() == pytest.approx(0.5 * 3 * math.log(2) + 0.5 * math.log(2))
    with pytest.raises(ValueError):
        weighted_bce(logits, None)


def test_soft_iou_weighs_every_sample_alike_and_ignores_padding() -> None:
    masks = torch.zeros(2, 1, 4, 4)
    masks[0, :, :2, :2] = 1  # one target cell on the 2 x 2 logit grid; sample 1 has no target
    valid = torch.ones(2, 1, 4, 4)
    valid[:, :, 2:, :] = 0
    right = torch.full((2, 1, 2, 2), -30.0)
    right[0, :, 0, 0] = 30.0
    assert soft_iou(right, masks, valid).item() == pytest.approx(0.0, abs=1e-6)
    wrong_on_padding = right.clone()
    wrong_on_padding[:, :, 1, :] = 30.0  # the padding row does not count
    assert soft_iou(wrong_on_padding, masks, valid).item() == pytest.approx(0.0, abs=1e-6)
    missed = torch.full((2, 1, 2, 2), -30.0)
    # sample 0: intersection 0, union 1 → 1 − 1/2; sample 1: empty target and prediction → 0
    assert soft_iou(missed, masks, valid).item() == pytest.approx(0.25, abs=1e-6)
    everywhere = torch.full((2, 1, 2, 2), 30.0)
    # sample 0: 1 − 2/3 (union = the 2 valid cells); sample 1: 1 − 1/3
    assert soft_iou(everywhere, masks, valid).item() == pytest.approx((1 / 3 + 2 / 3) / 2, abs=1e-6)
    with pytest.raises(ValueError):
        soft_iou(right, None)


def test_distractor_logistic_costs_only_the_target_categorys_other_pixels() -> None:
    # 2 x 2 canvas, one logit per pixel: target (category 7) at (0, 0), another 7 at (0, 1),
    # category 3 at (1, 0), unlabelled at (1, 1)
    masks = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    categories = torch.tensor([[[7, 7], [3, -1]]])
    logits = torch.zeros(1, 1, 2, 2, requires_grad=True)
    loss = distractor_logistic(logits, masks, None, categories, torch.tensor([7]))
    assert loss.item() == pytest.approx(math.log(2) / 4)  # one distractor pixel of four at logit 0
    loss.backward()
    assert torch.nonzero(logits.grad[0, 0]).tolist() == [[0, 1]]  # only the distractor is pushed down
    valid = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]])  # the distractor lies on the padding
    assert distractor_logistic(logits, masks, valid, categories, torch.tensor([7])).item() == 0.0
    # an unknown target category or a photo without labels has no distractors
    assert distractor_logistic(logits, masks, None, categories, torch.tensor([-1])).item() == 0.0
    assert distractor_logistic(logits, masks, None, None, None).item() == 0.0
    # area resizing: on one 1 x 1 logit a quarter of the cell is distractor
    whole = distractor_logistic(torch.zeros(1, 1, 1, 1), masks, None, categories, torch.tensor([7]))
    assert whole.item() == pytest.approx(0.25 * math.log(2))
    with pytest.raises(ValueError, match="target masks"):
        distractor_logistic(logits, None, None, categories, torch.tensor([7]))


def test_category_cross_entropy_ignores_unlabelled() -> None:
    logits = torch.zeros(1, 4, 2, 2, requires_grad=True)
    labels = torch.full((1, 8, 8), -1, dtype=torch.long)
    assert category_cross_entropy(logits, labels).item() == 0.0
    labels[0, :4, :4] = 2
    assert category_cross_entropy(logits, labels).item() == pytest.approx(math.log(4))


# ---------------------------------------------------------------------------------------- models
@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("lstm_cnn", **SMALL)


def test_lstm_cnn_overfits_four_shaperef_samples() -> None:
    torch.manual_seed(0)
    model = create_model("lstm_cnn", **SMALL)
    assert overfit(model, shaperef_batch(model), steps=800).min() >= 0.9


@pytest.mark.parametrize(
    "options",
    [dict(), dict(category_source="imagenet", category_text="zero_shot")],
    ids=["segmentation-head", "imagenet-zero-shot"],
)
def test_lstm_cnn_plus_overfits_four_shaperef_samples(options: dict) -> None:
    torch.manual_seed(0)
    model = create_model("lstm_cnn_plus", category_hidden=64, **SMALL, **options)
    assert overfit(model, shaperef_batch(model), steps=800).min() >= 0.9


@pytest.mark.parametrize("size", [97, 130])
def test_output_shapes_for_odd_sizes(model, size: int) -> None:
    tokens, lengths = model.tokenize(["the red circle", ""])
    batch = Batch(torch.randn(2, 3, size, size), tokens, lengths)
    with torch.no_grad():
        out = model(batch)
        low = create_model("lstm_cnn", stage="low", **SMALL)(batch)
    h = math.ceil(size / 8)
    assert out.logits.shape == (2, 1, size, size)
    assert out.extras["low_res_logits"].shape == low.logits.shape == (2, 1, h, h)


def test_backbone_is_frozen_and_left_out_and_stage_is_checked() -> None:
    model = create_model("lstm_cnn", vocab=["red", "circle"], **SMALL)
    assert model.checkpoint_exclude() == ["backbone."] and model.backbone_frozen
    with pytest.raises(ConfigError):
        create_model("lstm_cnn", stage="medium")


def test_set_stage_leaves_the_config_and_checkpoints_record_the_stage(tmp_path) -> None:
    """The two-stage schedule switches what forward outputs; ``config`` stays as built and a
    checkpoint saved in the low stage rebuilds a low-stage model."""
    from refseg.engine.checkpoint import load_model, save_model

    model = create_model("lstm_cnn", vocab=["red"], **SMALL).eval()
    batch = Batch(torch.randn(1, 3, 64, 64), *model.tokenize(["red"]))
    model.set_stage("low")
    assert model.config["stage"] == "high" and model.saved_config()["stage"] == "low"
    with torch.no_grad():
        low = model(batch).logits
    loaded, _ = load_model(save_model(tmp_path / "low.safetensors", model))
    assert loaded.stage == "low" and low.shape[-1] == 8
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(batch).logits, low)
    with pytest.raises(ConfigError, match="stage must be one of"):
        model.set_stage("medium")


def test_models_with_the_same_frozen_backbone_and_encoding_share_cached_features() -> None:
    """The feature-cache key names the image encoding and the backbone options, not the model."""
    lstm_cnn = create_model("lstm_cnn", output_stride=32, hidden=8, classifier=8)
    rmi = create_model("rmi", output_stride=32, hidden=8)
    others = [
        create_model("lstm_cnn", output_stride=16, hidden=8, classifier=8),  # another backbone
        create_model("per_word", output_stride=32),  # every tap, not the deepest alone
        create_model("lstm_cnn_plus", output_stride=32, category_source="imagenet", category_hidden=8),  # + p_image
        create_model("lstm_cnn", output_stride=32, backbone_trainable_stages=1),  # fine-tuned: its own
    ]
    assert lstm_cnn.feature_signature() == rmi.feature_signature()
    assert len({lstm_cnn.feature_signature(), *(m.feature_signature() for m in others)}) == 1 + len(others)
    assert others[-1].feature_signature() != create_model("lstm_cnn", backbone_trainable_stages=1).feature_signature()


def test_gradients_reach_the_text_encoder(model) -> None:
    batch = shaperef_batch(model)
    model.zero_grad()
    model.loss(model(batch), batch).backward()
    assert model.text.lstm.weight_ih_l0.grad.abs().sum() > 0
    assert model.text.embed.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.backbone.parameters())


def test_category_branch_and_alpha_train() -> None:
    torch.manual_seed(0)
    model = create_model("lstm_cnn_plus", category_hidden=32, **SMALL)
    batch = shaperef_batch(model)
    batch.categories = (batch.masks[:, 0] > 0).long() * 3 - (batch.valid[:, 0] == 0).long()  # 3 or 0, -1 on padding
    out = model(batch)
    assert out.extras["category_logits"].shape[1] == 135 and out.extras["category_map"].shape == (4, 1, 12, 12)
    with_labels = model.loss(out, batch)
    unlabelled = Batch(batch.images, batch.tokens, batch.lengths, masks=batch.masks, valid=batch.valid)
    without_labels = model.loss(out, unlabelled)
    assert with_labels > without_labels
    with_labels.backward()
    branch = (model.alpha_logit, model.log_temperature, model.category_head[1].weight, model.text_classifier[0].weight)
    for param in branch:
        assert param.grad is not None and param.grad.abs().sum() > 0
    alpha = out.extras["alpha"].item()
    assert 0 < alpha < 1 and alpha == pytest.approx(0.7)
    # GloVe stays frozen (a non-persistent buffer, no parameter at all).
    assert not any("embed" in name for name, _ in model.named_parameters())
    assert "text.glove" not in model.state_dict()


def test_text_category_supervision_and_logit_fusion() -> None:
    torch.manual_seed(0)
    model = create_model("lstm_cnn_plus", category_hidden=32, fusion="logit", **SMALL)
    batch = shaperef_batch(model)
    out = model(batch)
    assert not hasattr(model, "alpha_logit") and out.extras["alpha"].item() == pytest.approx(1.0)
    # Logit fusion: the output is the main branch's logit plus beta * logit(category map).
    main = model.head.high_res(out.extras["low_res_logits"], batch.images.shape[-1])
    category = F.interpolate(out.extras["category_map"], scale_factor=8, mode="bilinear")
    expected = main + probability_to_logit(category)
    torch.testing.assert_close(out.logits, expected, atol=1e-4, rtol=1e-4)
    plain = model.loss(out, batch)
    batch.target_categories = torch.tensor([0, -1, 5, -1])
    supervised = model.loss(out, batch)
    assert supervised > plain
    model.zero_grad()
    (supervised - plain).backward()  # the text cross-entropy alone reaches the text classifier
    assert model.text_classifier[0].weight.grad.abs().sum() > 0
    assert not model.category_head[1].weight.grad.any()  # the image side is untouched
    # Labels of the segmentation space are not applied to the 1000 ImageNet classes.
    imagenet = create_model("lstm_cnn_plus", category_source="imagenet", category_hidden=32, **SMALL)
    out = imagenet(batch)
    assert imagenet.loss(out, batch) == imagenet.loss(out, replace(batch, target_categories=None))
    with pytest.raises(ConfigError):
        create_model("lstm_cnn_plus", fusion="max", **SMALL)


def test_feature_dropout_acts_only_in_training() -> None:
    torch.manual_seed(0)
    model = create_model("lstm_cnn_plus", category_hidden=32, feature_dropout=0.5, **SMALL)
    batch = shaperef_batch(model)
    model.train()
    assert not torch.equal(model(batch).logits, model(batch).logits)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(batch).logits, model(batch).logits)
    with pytest.raises(ConfigError):
        create_model("lstm_cnn_plus", feature_dropout=1.0, **SMALL)


@pytest.mark.parametrize("context", [0, 3])
def test_context_layers_widen_what_a_location_sees(context: int) -> None:
    torch.manual_seed(0)
    head = LstmCnnHead(visual_dim=8, text_dim=4, classifier=16, stride=8, context=context)
    paper = LstmCnnHead(visual_dim=8, text_dim=4, classifier=16, stride=8)
    paper.load_state_dict(head.state_dict(), strict=False)
    visual, sentence = torch.randn(1, 8, 12, 12, requires_grad=True), torch.randn(1, 4)
    # an untrained head (gates closed) computes what the paper's head does
    torch.testing.assert_close(head.low_res(visual, sentence), paper.low_res(visual, sentence))
    if context:
        with torch.no_grad():  # open the gates, as after training
            head.context_gates.fill_(1.0)
        assert not torch.allclose(head.low_res(visual, sentence), paper.low_res(visual, sentence))
    head.low_res(visual, sentence)[0, 0, 6, 6].backward()
    seen = visual.grad.abs().sum(dim=(0, 1)) > 0
    # 1x1 classifier: one location; dilations 1, 2, 4: a 15 x 15 window, the whole 12 x 12 map here
    assert seen.sum().item() == (1 if context == 0 else 144)
    assert len(head.context) == context
    if context == 0:  # the paper's head has exactly its old parameters (earlier checkpoints load)
        assert {k.split(".")[0] for k in head.state_dict()} == {"classifier", "deconv"}
    with pytest.raises(ConfigError):
        LstmCnnHead(8, 4, 16, 8, context=-1)


def test_lstm_cnn_plus_with_context_overfits_four_shaperef_samples() -> None:
    torch.manual_seed(0)
    model = create_model("lstm_cnn_plus", category_hidden=64, context=2, **SMALL)
    assert overfit(model, shaperef_batch(model), steps=800).min() >= 0.9


def test_context_option_reaches_both_lstm_cnn_models() -> None:
    for name in ("lstm_cnn", "lstm_cnn_plus"):
        model = create_model(name, context=2, **SMALL)
        assert len(model.head.context) == 2 and model.config["context"] == 2
        tokens, lengths = model.tokenize(["a zebra"])
        with torch.no_grad():
            assert model(Batch(torch.randn(1, 3, 64, 64), tokens, lengths)).logits.shape == (1, 1, 64, 64)


def test_text_coords_let_the_expression_choose_the_side() -> None:
    torch.manual_seed(0)
    head = LstmCnnHead(visual_dim=8, text_dim=4, classifier=16, stride=8, text_coords="absolute")
    paper = LstmCnnHead(visual_dim=8, text_dim=4, classifier=16, stride=8)
    paper.load_state_dict(head.state_dict(), strict=False)
    visual = torch.randn(1, 8, 6, 6)
    visual = (visual + visual.flip(-1)).expand(2, -1, -1, -1)  # left-right symmetric features
    left, right = torch.eye(4)[:1], -torch.eye(4)[:1]  # two expressions, opposite directions
    sentences = torch.cat([left, right])
    # an untrained projection (zero) computes what the paper's head does
    torch.testing.assert_close(head.low_res(visual, sentences), paper.low_res(visual, sentences))
    with torch.no_grad():  # without its fixed coordinate weights ([visual; x, y; text] columns 8-9)
        head.classifier[0].weight[:, 8:10] = 0.0
    plain = head.low_res(visual, sentences)  # mirror-symmetric features give a symmetric map
    torch.testing.assert_close(plain, plain.flip(-1))
    with torch.no_grad():  # as after training: word direction 0 pushes every unit's score to the left
        head.classifier[2].weight.fill_(1.0)
        head.text_coords.weight[:16, 0] = -1.0  # x slopes of the 16 hidden units
    scores = head.low_res(visual, sentences)[:, 0].mean(dim=1)  # [2, columns]
    assert (scores[0, :3].sum() > scores[0, 3:].sum()) and (scores[1, 3:].sum() > scores[1, :3].sum())
    assert set(head.state_dict()) == set(paper.state_dict()) | {"text_coords.weight", "text_coords.bias"}


def test_relative_coords_centre_on_the_map_and_scale_by_its_spread() -> None:
    coords = coord_channels(5, 5, "2d")
    scores = torch.full((1, 1, 5, 5), -30.0)
    scores[0, 0, :, 3:] = 30.0  # the map marks the two right columns, x = 0.5 and 1
    relative = relative_coords(scores, coords)
    x = relative[0, 0, 0]
    torch.testing.assert_close(x[3:], torch.tensor([-1.0, 1.0]))  # mean 0.75, spread 0.25
    assert x[0] == -3.0  # the far left column is clipped
    torch.testing.assert_close(relative[0, 1, :, 0], torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]) / 0.5**0.5)


@pytest.mark.parametrize("mode", ["absolute", "relative"])
def test_text_coords_option_reaches_both_lstm_cnn_models(mode: str) -> None:
    frames = {"absolute": 1, "relative": 2}[mode]
    for name in ("lstm_cnn", "lstm_cnn_plus"):
        model = create_model(name, text_coords=mode, **SMALL)
        assert model.head.text_coords.out_features == 2 * frames * 64 and model.config["text_coords"] == mode
        tokens, lengths = model.tokenize(["the zebra on the left"])
        with torch.no_grad():
            model.head.text_coords.weight.normal_()
            assert model(Batch(torch.randn(1, 3, 64, 64), tokens, lengths)).logits.shape == (1, 1, 64, 64)
        assert create_model(name, **SMALL).head.text_coords is None
    with pytest.raises(ConfigError):
        create_model("lstm_cnn", text_coords="polar", **SMALL)


def test_lstm_cnn_plus_options() -> None:
    model = create_model("lstm_cnn_plus", text="minilm", category_text="both", **SMALL)
    assert model.checkpoint_exclude() == ["backbone.", "text.model."]
    tokens, lengths = model.tokenize(["a zebra", "the sky"])
    with torch.no_grad():
        out = model(Batch(torch.randn(2, 3, 64, 64), tokens, lengths))
    assert out.logits.shape == (2, 1, 64, 64) and model.class_vectors.shape == (135, 384)
    with pytest.raises(ConfigError):
        create_model("lstm_cnn_plus", embedding="learned", category_text="zero_shot", **SMALL)
    with pytest.raises(ConfigError):
        create_model("lstm_cnn_plus", category_source="pascal", **SMALL)


def test_learned_embeddings_train_and_glove_stays_fixed() -> None:
    """LSTM-CNN+ keeps GloVe fixed (paper 2 §2.1) but trains random embeddings (its ablation)."""
    vocab = ["red", "circle"]
    learned = create_model("lstm_cnn_plus", embedding="learned", category_text="learned", vocab=vocab, **SMALL)
    glove = create_model("lstm_cnn_plus", embedding="glove", category_text="learned", vocab=vocab, **SMALL)
    assert learned.text.embed.weight.requires_grad and learned.config["freeze_embedding"] is False
    assert not glove.text.embed.weight.requires_grad and glove.config["freeze_embedding"] is True
    tuned = create_model("lstm_cnn_plus", embedding="glove", freeze_embedding=False, vocab=vocab, **SMALL)
    assert tuned.text.embed.weight.requires_grad


def test_fc8_features_are_the_l2_normalised_class_scores() -> None:
    """Paper 1 §3.1: with ``backbone_last="classes"`` the classifier reads fc8 (the 1000 ImageNet
    class scores at every location), L2-normalised, with coordinates and the tiled text."""
    torch.manual_seed(0)
    model = create_model("lstm_cnn", vocab=["red", "circle"], backbone_last="classes", **SMALL).eval()
    assert model.head.classifier[0].in_channels == 1000 + 2 + SMALL["hidden"]
    images = torch.randn(1, 3, 64, 64)
    batch = Batch(images, *model.tokenize(["red circle"]))
    with torch.no_grad():
        head_tap = create_model("lstm_cnn", **SMALL).backbone
        scores = head_tap.imagenet_logits(head_tap(images)[-1])
        sentence = model.text(batch.tokens, batch.lengths).sentence
        text = (F.normalize(sentence) * math.sqrt(sentence.shape[1]))[:, :, None, None].expand(-1, -1, 8, 8)
        features = add_coords(F.normalize(scores) * math.sqrt(1000), "2d")
        want = model.head.classifier(torch.cat([features, text], dim=1))
        torch.testing.assert_close(model(batch).extras["low_res_logits"], want, rtol=1e-4, atol=1e-4)


def test_partly_fine_tuned_backbone_is_saved_and_trained_at_its_own_rate(tmp_path) -> None:
    """With ``backbone_trainable_stages`` the backbone trains (at lr x backbone_lr_scale), cannot be
    cached, and its weights go into the checkpoint instead of being rebuilt from ImageNet."""
    from refseg.config import Config
    from refseg.engine.checkpoint import load_model, save_model
    from refseg.engine.trainer import build_optimizer

    torch.manual_seed(0)
    model = create_model("lstm_cnn", vocab=["red", "circle"], backbone_trainable_stages=1, hidden=16, classifier=16)
    assert not model.backbone_frozen and model.checkpoint_exclude() == []
    config = Config()
    config.train.lr, config.train.backbone_lr_scale = 1e-3, 0.1
    optimizer = build_optimizer(config, model)
    head, backbone = optimizer.param_groups
    assert (head["lr"], backbone["lr"]) == (1e-3, pytest.approx(1e-4))
    assert {id(p) for p in backbone["params"]} == {id(p) for p in model.backbone.parameters() if p.requires_grad}
    imagenet = model.backbone.net._conv_head.weight.detach().clone()
    batch = Batch(torch.randn(2, 3, 64, 64), *model.tokenize(["red circle", "circle"]), masks=torch.ones(2, 1, 64, 64))
    model.loss(model(batch), batch).backward()
    optimizer.step()
    tuned = model.backbone.net._conv_head.weight.detach().clone()
    assert not torch.equal(tuned, imagenet)
    model.eval()
    with torch.no_grad():
        expected = model(Batch(batch.images, batch.tokens, batch.lengths)).logits
    loaded, _ = load_model(save_model(tmp_path / "tuned.safetensors", model))
    torch.testing.assert_close(loaded.backbone.net._conv_head.weight, tuned)
    with torch.no_grad():
        torch.testing.assert_close(loaded(Batch(batch.images, batch.tokens, batch.lengths)).logits, expected)
