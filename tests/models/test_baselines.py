"""Baselines of paper 1 §4.1: whole image and per-word segmentation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from refseg.data.transforms import Letterbox
from refseg.errors import ConfigError
from refseg.models import Batch, create_model
from refseg.models.text import most_frequent_words
from tests.fixtures.shaperef import overfit, shaperef_batch

SMALL = dict(output_stride=8, hidden=64)


def test_whole_image_predicts_the_whole_image() -> None:
    model = create_model("whole_image")
    assert not list(model.parameters()) and model.backbone_frozen and model.encode_image(torch.zeros(1, 3, 8, 8)) == []
    tokens, lengths = model.tokenize(["anything at all", ""])
    out = model(Batch(None, tokens, lengths))
    box = Letterbox(30, 50, 64)
    mask = box.invert(out.logits[0, 0]) > 0
    assert mask.shape == (30, 50) and bool(mask.all())


def _model_with_words(words: list[str], combine: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("per_word", words=words, combine=combine, pretrained=False, **SMALL)


@pytest.mark.parametrize(
    "combine, expected",
    [
        ("average", [True, False, False, True]),
        ("intersection", [True, False, False, False]),
        ("union", [True, True, False, True]),
    ],
)
def test_per_word_combinations(combine: str, expected: list[bool]) -> None:
    model = _model_with_words(["red", "circle", "left"], combine)
    # Two present words ("red", "circle"); their scores at four pixels.
    maps = torch.tensor([[[[4.0, 1.0, -5.0, 5.0]], [[2.0, -3.0, -6.0, -1.0]]]])  # [1, K=2, 1, 4]
    combined = model.combine(maps, torch.tensor([[1.0, 1.0]]))
    assert (combined[0, 0, 0] > 0).tolist() == expected


def test_per_word_without_known_words_predicts_background() -> None:
    model = _model_with_words(["red", "circle"], "union")
    tokens, lengths = model.tokenize(["a blue square", "red circle red", ""])
    present = model.present_words(tokens, lengths)
    assert present.tolist() == [[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]]
    with torch.no_grad():
        out = model(Batch(torch.randn(3, 3, 65, 65), tokens, lengths))
    assert out.logits.shape == (3, 1, 65, 65) and out.extras["word_logits"].shape == (3, 2, 9, 9)
    assert bool((out.logits[0] < 0).all()) and bool((out.logits[2] < 0).all())


def test_per_word_overfits_four_shaperef_samples() -> None:
    probe = _model_with_words(["shape"], "average")
    words = most_frequent_words(shaperef_batch(probe).texts, 20)
    torch.manual_seed(0)
    model = create_model("per_word", words=words, **SMALL)
    assert model.config["words"] == words and model.checkpoint_exclude() == ["backbone."]
    assert overfit(model, shaperef_batch(model), steps=1000, lr=1e-2).min() >= 0.9


def test_per_word_defaults_and_errors() -> None:
    model = create_model("per_word", pretrained=False)
    words = model.config["words"]
    assert len(words) == 500 and len(set(words)) == 500 and "the" not in words
    with pytest.raises(ConfigError):
        create_model("per_word", combine="vote", pretrained=False)
    with pytest.raises(ConfigError):
        create_model("per_word", words=[], pretrained=False)
    assert np.isfinite(model.loss(*_one_step(model)).item())


def _one_step(model):
    tokens, lengths = model.tokenize(["the man on the left"])
    batch = Batch(torch.randn(1, 3, 64, 64), tokens, lengths, masks=torch.ones(1, 1, 64, 64))
    return model(batch), batch
