"""STEP (paper 4 §3): overfitting, levels, shapes, attention, determinism, padding, export."""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from refseg.errors import ConfigError
from refseg.models import create_model
from refseg.models.base import Batch
from tests.fixtures.shaperef import overfit, shaperef_batch, text_batch

WIDTHS = dict(hidden=64, visual_dim=64, attention_dim=64, embed_space_dim=64)
SMALL = dict(pretrained=False, hidden=16, visual_dim=16, attention_dim=8, embed_space_dim=8, gru_hidden=8)


def test_overfits_four_shaperef_samples(vocab):
    torch.manual_seed(0)
    model = create_model("step", vocab=vocab, **WIDTHS)
    batch = shaperef_batch(model)
    assert len(batch.texts) == 4
    ious = overfit(model, batch, steps=200)
    assert bool((ious >= 0.9).all()), ious


def test_five_levels_from_the_backbone(vocab):
    model = create_model("step", vocab=vocab, **SMALL)
    with torch.no_grad():
        levels = model.encode_image(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in levels] == [24, 40, 112, 320, 1280]  # lite0: 4 taps + head conv
    assert [f.shape[-1] for f in levels] == [16, 8, 8, 8, 8]  # strides 4, 8, 8, 8, 8 at output stride 8
    assert model.steps == 5


@pytest.mark.parametrize("size,grid_stride,folds", [(75, 4, 1), (61, 8, 2)])
def test_output_shapes_for_odd_sizes(vocab, size, grid_stride, folds):
    model = create_model("step", vocab=vocab, grid_stride=grid_stride, folds=folds, **SMALL).eval()
    batch = text_batch(model, ["the red circle", "blue"], size=size)
    with torch.no_grad():
        out = model(batch)
    side, steps = -(-size // grid_stride), 5 * folds
    assert out.logits.shape == (2, 1, side, side)
    assert out.extras["word_attention"].shape == (2, steps, batch.tokens.shape[1])
    assert out.extras["step_maps"].shape == (2, steps, side, side)
    torch.testing.assert_close(out.extras["step_maps"][:, -1:], out.logits)


def test_three_channel_gru_input_reads_evidence_belief_and_level(vocab):
    """§3.5's c = 3: x_t = [Q_t; P_{t-1}; ℓ_t / 4]; the first step's belief is the uniform 0.5."""
    torch.manual_seed(0)
    model = create_model("step", vocab=vocab, gru_channels=3, **SMALL).eval()
    assert model.gru.input_to_all.in_channels == 3
    seen = []
    model.gru.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    batch = text_batch(model, ["the red circle", "blue"])
    with torch.no_grad():
        out = model(batch)
    assert len(seen) == 5 and all(x.shape[1] == 3 for x in seen)
    for t, x in enumerate(seen):
        assert bool((x[:, 2] == t / 4).all()) and bool((x[:, 0] >= 0).all())  # level code; Q_t = ReLU(...)
    assert bool((seen[0][:, 1] == 0.5).all())
    torch.testing.assert_close(seen[-1][:, 1:2], torch.sigmoid(out.extras["step_maps"][:, 3:4]))


@pytest.mark.parametrize("bad", [dict(folds=0), dict(grid_stride=2), dict(backbone_last="head"), dict(gru_channels=2)])
def test_bad_options_are_config_errors(vocab, bad):
    with pytest.raises(ConfigError):
        create_model("step", vocab=vocab, **{**SMALL, **bad})


def test_word_attention_sums_to_one_over_real_tokens(vocab):
    model = create_model("step", vocab=vocab, **SMALL).eval()
    batch = text_batch(model, ["the dotted red square", "green", "pink star"])
    with torch.no_grad():
        attention = model(batch).extras["word_attention"]
    real = (torch.arange(batch.tokens.shape[1])[None, :] < batch.lengths[:, None]).float()
    torch.testing.assert_close(attention.sum(-1), torch.ones(3, model.steps))
    assert bool((attention * (1 - real[:, None, :]) == 0).all())
    assert bool((attention[0] > 0).all())


def test_gradients_reach_the_text_encoder(vocab):
    model = create_model("step", vocab=vocab, **SMALL)
    batch = text_batch(model, ["the red circle", "pink star"])
    batch.masks = (torch.rand(2, 1, 64, 64) > 0.7).float()
    model.loss(model(batch), batch).backward()
    params = dict(model.named_parameters())
    for name in ("text.embed.weight", "text.lstm.weight_ih_l0", "text.lstm_backward.weight_ih_l0", "psi.weight"):
        assert params[name].grad is not None and params[name].grad.abs().sum() > 0, name


def test_padding_tokens_change_nothing(vocab):
    torch.manual_seed(0)
    model = create_model("step", vocab=vocab, **SMALL).eval()
    batch = text_batch(model, ["the dotted red square", "green"])
    padded = Batch(images=batch.images, tokens=F.pad(batch.tokens, (0, 3)), lengths=batch.lengths)
    with torch.no_grad():
        out, out_padded = model(batch), model(padded)
    torch.testing.assert_close(out.logits, out_padded.logits)
    steps = batch.tokens.shape[1]
    torch.testing.assert_close(out.extras["word_attention"], out_padded.extras["word_attention"][..., :steps])
    other = Batch(images=batch.images, tokens=batch.tokens.clone(), lengths=batch.lengths)
    other.tokens[0, 2] = model.tokenize(["blue"])[0][0, 0]
    with torch.no_grad():
        assert not torch.allclose(model(other).logits[0], out.logits[0])  # real words do matter


