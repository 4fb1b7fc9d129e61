"""Unusual expressions: empty ones are refused with one line; everything else (10 000 characters,
emoji, CJK, unknown words, punctuation) segments without crashing, on every text encoder."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from refseg.api import Segmenter
from refseg.errors import TextError
from refseg.models.base import create_model
from refseg.models.text import UNK
from tests.fixtures.contracts import assert_json_error, assert_one_line_error
from tests.fixtures.photos import encode, left_red

LONG = "the red half " * 770  # 10 010 characters
ODD_TEXTS = {
    "ten_thousand_chars": LONG,
    "emoji": "🐶 the 🔴 thing on the left 👈",
    "cjk": "左边的红色 物体",
    "unknown_words": "zqxv blorft wibbleplonk",
    "punctuation_only": "?!… ,,, --- «»",
}
EMPTY_TEXTS = {"empty": "", "whitespace_only": " \t\n\u3000 "}
PHOTO = left_red(30, 44)


@pytest.fixture(scope="module", params=["learned", "glove_full", "minilm"])
def real_segmenter(request) -> Segmenter:
    """An untrained LSTM-CNN (paper 1) with each kind of text input: learned vocabulary, GloVe, MiniLM."""
    if request.param == "minilm":
        model = create_model("lstm_cnn", text="minilm", classifier=8)
    else:
        model = create_model("lstm_cnn", vocab=["red", "half", "left"], embedding=request.param, hidden=8, classifier=8)
    return Segmenter(model, canvas=64)


def test_odd_texts_segment_with_every_text_encoder(real_segmenter: Segmenter) -> None:
    """One call for all texts (one backbone pass): each gives a finite map at the photo's size;
    the 10 000 characters are cut to the model's cap, with a warning."""
    names = sorted(ODD_TEXTS)
    with pytest.warns(UserWarning, match="reads only the first"):
        predictions = real_segmenter.predict(PHOTO, [ODD_TEXTS[n] for n in names])
    for name, pred in zip(names, predictions):
        assert pred.mask.shape == PHOTO.shape[:2] and np.isfinite(pred.prob).all(), name
        assert len(pred.tokens) >= 1, name
    _, lengths = real_segmenter.model.tokenize([LONG])
    long_pred = predictions[names.index("ten_thousand_chars")]
    assert len(long_pred.tokens) <= int(lengths[0]) < 100


def test_text_without_words_reads_as_one_unknown_token(segmenter: Segmenter) -> None:
    for text in (ODD_TEXTS["punctuation_only"], "🐶🔴👈"):
        assert segmenter.predict(PHOTO, text).tokens == [UNK]


@pytest.mark.parametrize("name", sorted(EMPTY_TEXTS))
def test_api_empty_text_is_a_text_error(segmenter: Segmenter, name: str) -> None:
    with pytest.raises(TextError, match="empty"):
        segmenter.predict(PHOTO, EMPTY_TEXTS[name])


@pytest.fixture(scope="module")
def photo_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    path.write_bytes(encode(Image.fromarray(PHOTO), "PNG"))
    return path


@pytest.mark.parametrize("name", sorted(EMPTY_TEXTS))
def test_cli_empty_text_exits_2(cli, red_checkpoint, photo_file, name: str, tmp_path) -> None:
    code, _, err = cli("segment", photo_file, EMPTY_TEXTS[name], "-o", tmp_path / "m.png", "--model", red_checkpoint)
    assert_one_line_error(code, err, "empty")
    assert not (tmp_path / "m.png").exists()


@pytest.mark.parametrize("name", sorted(ODD_TEXTS))
def test_cli_odd_text_writes_a_mask(cli, red_checkpoint, photo_file, name: str, tmp_path) -> None:
    out = tmp_path / "m.png"
    code, _, err = cli("segment", photo_file, ODD_TEXTS[name], "-o", out, "--model", red_checkpoint)
    assert code == 0, err
    if name == "ten_thousand_chars":  # the cut is reported as one clean line, not a Python warning dump
        assert [line for line in err.splitlines() if line.strip()] == [
            f"warning: expression has {len(LONG.split())} words; the model reads only the first 6: {LONG[:60]!r}"
        ]
    assert Image.open(out).size == (PHOTO.shape[1], PHOTO.shape[0])


@pytest.mark.parametrize("name", sorted(EMPTY_TEXTS))
def test_server_empty_text_is_422(client, name: str) -> None:
    response = client.post("/segment", files={"image": ("p.png", encode(Image.fromarray(PHOTO), "PNG"))},
                           data={"text": EMPTY_TEXTS[name]})
    assert_json_error(response, 422, "empty")


@pytest.mark.parametrize("name", sorted(set(ODD_TEXTS) - {"ten_thousand_chars"}))
def test_server_odd_text_gives_a_mask(client, name: str) -> None:
    response = client.post("/segment", files={"image": ("p.png", encode(Image.fromarray(PHOTO), "PNG"))},
                           data={"text": ODD_TEXTS[name]})
    assert response.status_code == 200, response.text
    assert Image.open(io.BytesIO(response.content)).size == (PHOTO.shape[1], PHOTO.shape[0])


def test_server_refuses_text_over_its_character_limit(client) -> None:
    response = client.post("/segment", files={"image": ("p.png", encode(Image.fromarray(PHOTO), "PNG"))},
                           data={"text": LONG})
    assert_json_error(response, 422, "characters long")
