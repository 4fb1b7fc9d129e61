"""Segmenter: every input kind, original-size masks (odd sizes, EXIF rotation), one backbone pass
for many texts, text validation and truncation, extras, CRF and runtime hooks."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
import pytest
from PIL import Image

from refseg.api import TEXT_CHUNK, Prediction, Segmenter
from refseg.errors import CheckpointError, ConfigError, ImageError, TextError
from refseg.engine.checkpoint import save_model
from tests.fixtures.photos import red_square_photo
from tests.fixtures.red_model import NAME, STEPS, RedModel, save_red_model


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory) -> Segmenter:
    return Segmenter.from_pretrained(save_red_model(tmp_path_factory.mktemp("model"), image_size=128))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def test_from_pretrained_reads_the_canvas_from_the_checkpoint(tmp_path: Path) -> None:
    path = save_red_model(tmp_path, image_size=96)
    assert Segmenter.from_pretrained(path).canvas == 96
    assert Segmenter.from_pretrained(path, canvas=128).canvas == 128


def test_image_size_is_a_deprecated_alias_of_canvas(tmp_path: Path) -> None:
    path = save_red_model(tmp_path, image_size=96)
    with pytest.warns(DeprecationWarning, match="canvas"):
        seg = Segmenter.from_pretrained(path, image_size=128)
    with pytest.warns(DeprecationWarning, match="canvas"):
        assert seg.image_size == 128
    with pytest.warns(DeprecationWarning, match="canvas"):
        assert Segmenter(RedModel(), image_size=64).canvas == 64


def test_the_loader_gives_a_typed_model_card(tmp_path: Path) -> None:
    from refseg.io import file_sha256
    from refseg.runtime import load_pretrained

    path = save_model(tmp_path / "red.safetensors", RedModel(), {"image_size": 96, "threshold": 0.4})
    model, card = load_pretrained(path, canvas=64)
    assert (card.name, card.canvas, card.threshold, card.labels) == (NAME, 64, 0.4, ())
    assert card.provenance.path == path and card.provenance.sha256 == file_sha256(path)
    assert not card.provenance.shipped
    assert Segmenter.from_pretrained(path).card == load_pretrained(path)[1]


def test_a_registered_runner_is_a_runtime(tmp_path: Path) -> None:
    from refseg.runtime import base, list_runners, register_runner
    from refseg.runtime.torch_runner import TorchRunner

    built = []

    @register_runner("_test_counting")
    def counting(model, card, device="cpu"):
        built.append(card.canvas)
        return TorchRunner(model, device)

    try:
        assert "_test_counting" in list_runners()
        seg = Segmenter.from_pretrained(save_red_model(tmp_path, image_size=96), runtime="_test_counting")
        rgb, target = red_square_photo(40, 60, (5, 10, 30, 50))
        assert built == [96] and _iou(seg.predict(rgb, "red").mask, target) > 0.9
    finally:
        del base._RUNNERS["_test_counting"]


@pytest.mark.parametrize("kind", ["path", "bytes", "pil", "array"])
def test_every_input_kind_gives_the_same_mask(segmenter: Segmenter, tmp_path: Path, kind: str) -> None:
    rgb, target = red_square_photo(90, 140, (20, 30, 70, 100))
    path = tmp_path / "photo.png"
    Image.fromarray(rgb).save(path)
    source = {"path": path, "bytes": path.read_bytes(), "pil": Image.fromarray(rgb), "array": rgb}[kind]
    pred = segmenter.predict(source, "the red box")
    assert isinstance(pred, Prediction)
    assert pred.mask.shape == target.shape and pred.mask.dtype == bool
    assert pred.prob.shape == target.shape and pred.prob.dtype == np.float32
    assert _iou(pred.mask, target) > 0.9
    np.testing.assert_array_equal(pred.mask, segmenter.predict(rgb, "the red box").mask)


@pytest.mark.parametrize("size", [(37, 53), (101, 29), (64, 64), (255, 333)])
def test_mask_is_at_original_size_for_odd_sizes(segmenter: Segmenter, size: tuple[int, int]) -> None:
    h, w = size
    rgb, target = red_square_photo(h, w, (h // 4, w // 4, 3 * h // 4 + 1, 3 * w // 4 + 1))
    pred = segmenter.predict(rgb, "red")
    assert pred.mask.shape == (h, w)
    assert _iou(pred.mask, target) > 0.75


def test_exif_rotated_photo_gives_mask_in_displayed_orientation(segmenter: Segmenter) -> None:
    rgb, _ = red_square_photo(60, 100, (0, 0, 30, 20))  # stored: red at the top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", exif=exif, quality=95)
    pred = segmenter.predict(buf.getvalue(), "red")
    displayed = np.rot90(rgb, k=-1)
    assert pred.mask.shape == displayed.shape[:2] == (100, 60)
    expected = (displayed[..., 0] > 128) & (displayed[..., 2] < 128)
    assert _iou(pred.mask, expected) > 0.8


def test_list_of_texts_encodes_the_image_once(segmenter: Segmenter) -> None:
    rgb, _ = red_square_photo(50, 70, (10, 10, 40, 40))
    texts = [f"red thing {i}" for i in range(TEXT_CHUNK + 3)]  # more than one chunk of texts
    before = RedModel.encode_calls
    preds = segmenter.predict(rgb, texts)
    assert RedModel.encode_calls - before == 1
    assert [p.text for p in preds] == texts
    assert all(p.mask.shape == (50, 70) for p in preds)


def test_confidence_is_mean_probability_inside_mask_and_tokens_are_words(segmenter: Segmenter) -> None:
    rgb, _ = red_square_photo(40, 40, (5, 5, 25, 25))
    pred = segmenter.predict(rgb, "The red square")
    assert pred.tokens == ["the", "red", "square"] and not pred.empty
    assert pred.confidence == pytest.approx(float(pred.prob[pred.mask].mean()))
    empty = segmenter.predict(np.zeros((40, 40, 3), np.uint8) + np.uint8([0, 0, 200]), "red")
    assert empty.empty and not empty.mask.any()
    assert empty.confidence == pytest.approx(float(empty.prob.max()))
    assert empty.confidence < segmenter.threshold <= pred.confidence


def test_a_model_may_supply_its_own_confidence(segmenter: Segmenter, monkeypatch) -> None:
    rgb, _ = red_square_photo(40, 40, (5, 5, 25, 25))
    forward = segmenter.model.forward

    def with_confidence(batch):
        out = forward(batch)
        out.extras["confidence"] = torch.full((out.logits.shape[0],), 0.125)
        return out

    monkeypatch.setattr(segmenter.model, "forward", with_confidence)
    assert [p.confidence for p in segmenter.predict(rgb, ["red", "the red box"])] == [0.125, 0.125]


def test_threshold_moves_the_mask(segmenter: Segmenter) -> None:
    rgb, _ = red_square_photo(40, 40, (5, 5, 25, 25))
    assert segmenter.predict(rgb, "red", threshold=0.0).mask.all()
    strict, loose = (segmenter.predict(rgb, "red", threshold=t).mask.sum() for t in (0.99, 0.5))
    assert strict <= loose
    with pytest.raises(ConfigError):
        segmenter.predict(rgb, "red", threshold=1.5)


def test_threshold_stored_with_the_model_is_the_default(tmp_path: Path) -> None:
    from refseg.engine.checkpoint import load_model

    model, _ = load_model(save_red_model(tmp_path))
    strict = Segmenter.from_pretrained(save_model(tmp_path / "strict.safetensors", model, {"threshold": 0.99}))
    assert strict.threshold == 0.99
    rgb, _ = red_square_photo(40, 40, (5, 5, 25, 25))
    default = strict.predict(rgb, "red")
    np.testing.assert_array_equal(default.mask, strict.predict(rgb, "red", threshold=0.99).mask)
    assert Segmenter.from_pretrained(save_red_model(tmp_path)).threshold == 0.5  # nothing stored
    with pytest.raises(CheckpointError, match="threshold"):  # refused at load, before any prediction
        Segmenter.from_pretrained(save_model(tmp_path / "bad.safetensors", model, {"threshold": 1.5}))


@pytest.mark.parametrize("bad", ["", "   \n\t", [], ["ok", " "], [3]])
def test_empty_or_non_string_text_is_a_text_error(segmenter: Segmenter, bad) -> None:
    with pytest.raises(TextError):
        segmenter.predict(np.zeros((8, 8, 3), np.uint8), bad)


def test_long_expression_is_truncated_with_a_warning(segmenter: Segmenter) -> None:
    long = " ".join(["red"] * 30)
    with pytest.warns(UserWarning, match="first 6"):
        pred = segmenter.predict(np.zeros((16, 16, 3), np.uint8), long)
    assert len(pred.tokens) == 6


def test_expression_without_words_reads_as_unknown(segmenter: Segmenter) -> None:
    pred = segmenter.predict(np.zeros((16, 16, 3), np.uint8), "?!")
    assert pred.tokens == ["<unk>"] and pred.mask.shape == (16, 16)


def test_bad_image_is_an_image_error(segmenter: Segmenter, tmp_path: Path) -> None:
    with pytest.raises(ImageError):
        segmenter.predict(tmp_path / "missing.jpg", "red")
    with pytest.raises(ImageError):
        segmenter.predict(b"not an image", "red")


def test_extras_are_per_word_at_original_size(segmenter: Segmenter) -> None:
    rgb, target = red_square_photo(45, 67, (10, 10, 35, 50))
    pred = segmenter.predict(rgb, "the big red box")
    maps, attention = pred.extras["word_maps"], pred.extras["word_attention"]
    assert maps.shape == (4, 45, 67) and maps.dtype == np.float32
    assert attention.shape == (STEPS, 4)
    # the toy model's last word map is the final logits: same probability as the prediction
    np.testing.assert_allclose(maps[-1], pred.prob, atol=1e-5)


def test_crf_option_refines_and_keeps_size(segmenter: Segmenter) -> None:
    pytest.importorskip("pydensecrf.densecrf")
    rgb, target = red_square_photo(61, 83, (12, 20, 50, 70))
    plain, refined = (segmenter.predict(rgb, "red", crf=c) for c in (False, True))
    assert refined.mask.shape == (61, 83)
    assert _iou(refined.mask, target) >= _iou(plain.mask, target)


def test_unknown_runtime_and_missing_checkpoint_are_user_errors(tmp_path: Path) -> None:
    path = save_red_model(tmp_path)
    with pytest.raises(ConfigError):
        Segmenter.from_pretrained(path, runtime="tensorflow")
    with pytest.raises(CheckpointError):
        Segmenter.from_pretrained(tmp_path / "nope.safetensors")


# ---------------------------------------------------------------------------------- real models
_VOCAB = ["the", "woman", "in", "orange", "suit", "flag", "on", "left", "cup", "cat"]
_TINY = {
    "lstm_cnn": {"hidden": 16, "classifier": 8},
    "rmi": {"hidden": 16, "embedding": "learned", "output_stride": 32},
    "step": {"hidden": 16, "embedding": "learned", "output_stride": 32},
}


def _tiny_real(name: str, folder: Path) -> Path:
    from refseg.engine.checkpoint import save_model
    from refseg.models import create_model, list_models

    if name not in list_models():
        pytest.skip(f"model {name!r} is not registered yet")
    torch_model = create_model(name, vocab=_VOCAB, **_TINY[name])
    return save_model(folder / f"{name}.safetensors", torch_model, {"image_size": 96})


@pytest.mark.parametrize("name", sorted(_TINY))
def test_real_model_end_to_end(name: str, tmp_path: Path) -> None:
    seg = Segmenter.from_pretrained(_tiny_real(name, tmp_path))
    calls = []
    encode = seg.model.encode_image
    seg.model.encode_image = lambda images: calls.append(images.shape) or encode(images)
    rgb = np.random.default_rng(0).integers(0, 255, (71, 103, 3), dtype=np.uint8)
    texts = ["the woman in the orange suit", "flag on the left", "cat"]
    preds = seg.predict(rgb, texts)
    assert calls == [(1, 3, 96, 96)]
    assert [p.tokens for p in preds] == [t.split() for t in texts]
    for p in preds:
        assert p.mask.shape == p.prob.shape == (71, 103)
        assert 0.0 <= p.prob.min() and p.prob.max() <= 1.0
        n = len(p.tokens)
        if "word_maps" in p.extras:
            assert p.extras["word_maps"].shape == (n, 71, 103)
            np.testing.assert_allclose(p.extras["word_maps"][-1], p.prob, atol=1e-5)
        if "word_attention" in p.extras:
            assert p.extras["word_attention"].shape[1] == n
    # batching texts changes nothing: each expression alone gives the same probability
    alone = seg.predict(rgb, texts[1])
    np.testing.assert_allclose(alone.prob, preds[1].prob, atol=1e-5)


def test_channels_last_backbone_gives_the_same_probabilities(tmp_path: Path) -> None:
    from refseg.runtime.torch_runner import TorchRunner

    path = _tiny_real("lstm_cnn", tmp_path)
    fast, plain = Segmenter.from_pretrained(path), Segmenter.from_pretrained(path)
    plain.runner = TorchRunner(plain.model, channels_last=False)
    assert fast.runner.channels_last and not plain.runner.channels_last
    rgb = np.random.default_rng(1).integers(0, 255, (50, 80, 3), dtype=np.uint8)
    np.testing.assert_allclose(fast.predict(rgb, "the cat").prob, plain.predict(rgb, "the cat").prob, atol=1e-5)
