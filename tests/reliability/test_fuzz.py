"""Property-based tests (hypothesis) of the pieces every prediction goes through: the letterbox
and its inverse, the metrics, and the tokenizers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image
from scipy import ndimage

from refseg.data.transforms import Letterbox, to_tensor
from refseg.engine.metrics import MetricAccumulator, iou
from refseg.labels import IMAGENET_MEAN, IMAGENET_STD
from refseg.models import text as T

sizes = st.integers(1, 160)
canvas_sizes = st.integers(8, 128)


@st.composite
def rectangle_masks(draw) -> np.ndarray:
    """A random H x W mask made of up to four axis-aligned rectangles (so it has an interior)."""
    h, w = draw(sizes), draw(sizes)
    mask = np.zeros((h, w), dtype=bool)
    for _ in range(draw(st.integers(0, 4))):
        top, left = draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))
        mask[top : top + draw(st.integers(1, h)), left : left + draw(st.integers(1, w))] = True
    return mask


# --------------------------------------------------------------------------- letterbox


@settings(max_examples=200, deadline=None)
@given(h=sizes, w=sizes, size=canvas_sizes, inside=st.floats(-50, 50), padding=st.floats(-50, 50))
def test_padding_never_leaks_into_the_inverted_map(h: int, w: int, size: int, inside: float, padding: float) -> None:
    """A canvas map that is constant on the image part inverts to exactly that constant at H x W,
    whatever the padding holds (the padding is cropped before any resampling)."""
    box = Letterbox(h, w, size)
    canvas = torch.full((size, size), padding)
    canvas[torch.from_numpy(box.valid())] = inside
    inverted = box.invert(canvas)
    assert inverted.shape == (h, w)
    torch.testing.assert_close(inverted, torch.full((h, w), inside), rtol=0, atol=1e-4)


@settings(max_examples=200, deadline=None)
@given(mask=rectangle_masks(), size=canvas_sizes)
def test_letterboxed_mask_inverts_to_the_original_away_from_its_boundary(mask: np.ndarray, size: int) -> None:
    """mask → Letterbox.mask (nearest) → ±1 logits → invert (bilinear) → ``> 0`` recovers every
    pixel more than one canvas pixel (1/scale original pixels) away from the mask's boundary:
    half a canvas pixel of nearest-neighbour sampling error plus half a pixel for where the
    bilinear interpolation crosses zero."""
    h, w = mask.shape
    box = Letterbox(h, w, size)
    logits = torch.from_numpy(box.mask(mask)).float() * 2 - 1
    recovered = box.invert(logits).numpy() > 0
    assert recovered.shape == (h, w)
    margin = math.ceil(1 / min(box.inner_h / h, box.inner_w / w))  # one canvas pixel, in original pixels
    footprint = np.ones((2 * margin + 1, 2 * margin + 1), dtype=bool)
    interior = ndimage.binary_erosion(mask, footprint, border_value=1)
    exterior = ndimage.binary_erosion(~mask, footprint, border_value=1)
    assert recovered[interior].all() and not recovered[exterior].any()


@settings(max_examples=100, deadline=None)
@given(h=sizes, w=sizes, size=canvas_sizes, seed=st.integers(0, 2**16))
def test_letterboxed_image_matches_pillow_and_pads_with_black(h: int, w: int, size: int, seed: int) -> None:
    """The image part is Pillow's bilinear resize (the filter the models were first trained with)
    up to rounding: at most two grey levels apart, even on pure noise where both filters' intermediate
    rounding differs most. The padding is zero."""
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    box = Letterbox(h, w, size)
    canvas = box.image(rgb)
    assert canvas.shape == (size, size, 3) and canvas.dtype == np.uint8
    pillow = np.asarray(Image.fromarray(rgb).resize((box.inner_w, box.inner_h), Image.BILINEAR))
    inner = canvas[: box.inner_h, : box.inner_w].astype(int)
    difference = np.abs(inner - pillow.astype(int))
    assert difference.max() <= 2 and difference.mean() <= 0.5
    assert not canvas[~box.valid()].any()


def test_to_tensor_normalises_with_imagenet_statistics() -> None:
    canvas = np.random.default_rng(0).integers(0, 256, (5, 5, 3), dtype=np.uint8)
    expected = (canvas.astype(np.float64) / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(to_tensor(canvas).numpy(), expected.transpose(2, 0, 1), atol=1e-5)


@settings(max_examples=100, deadline=None)
@given(h=sizes, w=sizes, size=canvas_sizes)
def test_letterbox_geometry(h: int, w: int, size: int) -> None:
    """The image part touches two canvas sides with its longer side, keeps the aspect ratio within
    a pixel of rounding and is never empty."""
    box = Letterbox(h, w, size)
    assert max(box.inner_h, box.inner_w) == size and min(box.inner_h, box.inner_w) >= 1
    assert abs(box.inner_h - h * box.scale) <= 0.5 + 1e-9 or box.inner_h == 1
    assert abs(box.inner_w - w * box.scale) <= 0.5 + 1e-9 or box.inner_w == 1
    assert box.valid().sum() == box.inner_h * box.inner_w


# --------------------------------------------------------------------------- metrics


masks_8x8 = arrays(bool, (8, 8))


@settings(max_examples=200, deadline=None)
@given(a=masks_8x8, b=masks_8x8)
def test_iou_is_bounded_symmetric_and_one_only_for_equal_masks(a: np.ndarray, b: np.ndarray) -> None:
    value = iou(a, b)
    assert 0.0 <= value <= 1.0
    assert value == iou(b, a)
    if b.any():
        assert (value == 1.0) == bool(np.array_equal(a, b))
        assert iou(b, b) == 1.0 and iou(~b, b) == 0.0
        assert value == pytest.approx((a & b).sum() / (a | b).sum())
    else:  # no target: 1 iff the prediction is empty too
        assert value == float(not a.any())


@settings(max_examples=100, deadline=None)
@given(pairs=st.lists(st.tuples(masks_8x8, masks_8x8, st.integers(1, 12)), min_size=1, max_size=12), cut=st.integers(0, 12))
def test_accumulator_summary_is_bounded_and_independent_of_how_samples_are_split(pairs, cut: int) -> None:
    whole = MetricAccumulator()
    first, second = MetricAccumulator(), MetricAccumulator()
    for i, (prediction, target, n_words) in enumerate(pairs):
        sentence = " ".join(["word"] * n_words)
        whole.add(prediction, target, sentence, f"s{i}")
        (first if i < cut else second).add(prediction, target, sentence, f"s{i}")
    summary = whole.summary()
    assert first.merge(second).summary() == summary
    assert summary["n"] == len(pairs)
    assert summary["mean_iou"] == pytest.approx(float(np.mean(whole.ious())))
    inter = sum(int((p & t).sum()) if t.any() else 0 for p, t, _ in pairs)
    union = sum(int((p | t).sum()) for p, t, _ in pairs)
    assert summary["overall_iou"] == pytest.approx(inter / union if union else 1.0)
    precisions = [summary[f"prec@{x:g}"] for x in (0.5, 0.6, 0.7, 0.8, 0.9)]
    if any(t.any() for _, t, _ in pairs):
        assert all(0.0 <= p <= 1.0 for p in precisions) and precisions == sorted(precisions, reverse=True)
    else:
        assert precisions == [None] * 5
    assert sum(bucket["n"] for bucket in summary["by_length"].values()) == len(pairs)


# --------------------------------------------------------------------------- tokenizers

VOCAB = T.Vocab(["red", "left", "狗", "café", "the"])


@settings(max_examples=300, deadline=None)
@given(texts=st.lists(st.text(max_size=200), min_size=1, max_size=4), max_len=st.integers(1, 30))
def test_any_unicode_tokenizes_to_at_least_one_id_in_the_vocabulary(texts: list[str], max_len: int) -> None:
    ids, lengths = T.encode(texts, VOCAB.lookup, max_len)
    assert ids.dtype == torch.long and ids.shape[0] == len(texts)
    assert ((lengths >= 1) & (lengths <= max_len)).all()
    for row, length in zip(ids, lengths):
        assert ((row[:length] >= T.UNK_ID) & (row[:length] < len(VOCAB))).all()  # no <pad> inside the text
        assert (row[length:] == T.PAD_ID).all()


@pytest.fixture(scope="module")
def encoders():
    from refseg.models.text_encoders import build_text_encoder

    glove = build_text_encoder("lstm", embedding="glove_full", hidden=4)
    minilm = build_text_encoder("minilm")
    return {"glove_full": (glove, len(T.glove_words()) + 2), "minilm": (minilm, minilm.tokenizer.vocab_size)}


@pytest.mark.parametrize("name", ["glove_full", "minilm"])
def test_real_tokenizers_accept_any_unicode(encoders, name: str) -> None:
    encoder, vocab_size = encoders[name]

    @settings(max_examples=150, deadline=None)
    @given(texts=st.lists(st.text(max_size=300), min_size=1, max_size=4))
    def check(texts: list[str]) -> None:
        ids, lengths = encoder.tokenize(texts)
        assert ids.shape[0] == len(texts) and (lengths >= 1).all()
        assert ((ids >= 0) & (ids < vocab_size)).all()

    check()
