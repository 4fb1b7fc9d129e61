"""Class 6 of issue 24: every size an option or file can set is capped (``refseg/limits.py``).

Out-of-range canvas sizes and upload limits are one line (exit 2 / ConfigError) before anything
is allocated, ``--image-size 0`` is an error rather than "the default", and DenseCRF runs on at
most ``CRF_MAX_PIXELS`` pixels whatever the photo's size.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from refseg.api import Segmenter
from refseg.errors import ConfigError
from refseg.limits import MAX_CANVAS, MIN_CANVAS, check_canvas_size, upload_bytes
from refseg.postprocess import crf
from tests.fixtures.contracts import assert_one_line_error
from tests.fixtures.photos import encode, left_red

BAD_CANVAS = ["0", "-5", "31", "2049", "12000", "100000"]


@pytest.fixture()
def photo(tmp_path):
    path = tmp_path / "photo.png"
    path.write_bytes(encode(Image.fromarray(left_red(20, 30)), "PNG"))
    return path


@pytest.mark.parametrize("size", BAD_CANVAS)
def test_cli_segment_refuses_canvas_sizes_out_of_range(cli, red_checkpoint, photo, tmp_path, size) -> None:
    code, _, err = cli("segment", photo, "red", "--model", red_checkpoint, "-o", tmp_path / "m.png", "--image-size", size)
    assert_one_line_error(code, err, f"between {MIN_CANVAS} and {MAX_CANVAS}")
    assert not (tmp_path / "m.png").exists()


@pytest.mark.parametrize("size", BAD_CANVAS)
def test_cli_eval_refuses_canvas_sizes_out_of_range(cli, red_checkpoint, photo, tmp_path, size) -> None:
    manifest = tmp_path / "refs.jsonl"
    manifest.write_text(json.dumps({"id": "a", "image": str(photo), "sentence": "red", "mask": None}) + "\n")
    code, _, err = cli("eval", "--data", manifest, "--model", red_checkpoint, "--image-size", size)
    assert_one_line_error(code, err, f"between {MIN_CANVAS} and {MAX_CANVAS}")


@pytest.mark.parametrize("size", [int(s) for s in BAD_CANVAS])
def test_api_refuses_canvas_sizes_out_of_range(red_checkpoint, size) -> None:
    with pytest.raises(ConfigError, match="between"):
        Segmenter.from_pretrained(red_checkpoint, canvas=size)


@pytest.mark.parametrize("size", [0, 100000, 12000])
def test_checkpoint_canvas_out_of_range_is_refused(cli, red_checkpoint, photo, tmp_path, size) -> None:
    with safe_open(str(red_checkpoint), framework="pt") as f:
        meta = dict(f.metadata())
    model = tmp_path / "big_canvas.safetensors"
    save_file(load_file(str(red_checkpoint)), str(model), metadata={**meta, "meta": json.dumps({"image_size": size})})
    code, _, err = cli("segment", photo, "red", "--model", model, "-o", tmp_path / "m.png")
    assert_one_line_error(code, err, "between")


def test_training_refuses_a_canvas_out_of_range(tmp_path) -> None:
    from refseg.config import load_config
    from refseg.engine.trainer import train
    from tests.fixtures.training import tiny_shaperef_config

    config = load_config(tiny_shaperef_config(tmp_path, n=40, epochs=1, checkpoint_every=0),
                         ["data.image_size=12000", f"train.out_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match="between"):
        train(config)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.integers(-10**9, 10**9), st.floats(allow_nan=True), st.booleans(), st.text(max_size=4)))
def test_canvas_check_accepts_exactly_the_whole_numbers_in_range(value) -> None:
    ok = (not isinstance(value, (bool, str)) and float(value).is_integer()
          and MIN_CANVAS <= value <= MAX_CANVAS) if not isinstance(value, float) or np.isfinite(value) else False
    try:
        size = check_canvas_size(value)
    except ConfigError as exc:
        assert not ok and "\n" not in str(exc)
        return
    assert ok and size == value and isinstance(size, int)


@pytest.mark.parametrize("megabytes", ["inf", "nan", "1e9", "-inf"])
def test_cli_serve_refuses_upload_limits_out_of_range(cli, red_checkpoint, monkeypatch, megabytes) -> None:
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("the server started"))
    code, _, err = cli("serve", "--model", red_checkpoint, "--max-upload-mb", megabytes)
    if megabytes in ("nan", "-inf"):  # refused by the option's minimum: click's own usage error, exit 2
        assert code == 2 and "Traceback" not in err and "--max-upload-mb" in err
    else:
        assert_one_line_error(code, err, "upload limit")


@pytest.mark.parametrize("megabytes", [0.01, 10, 1024])
def test_upload_limits_in_range_are_bytes(megabytes) -> None:
    assert upload_bytes(megabytes) == int(megabytes * 2**20)


@pytest.mark.parametrize("shape", [(300, 400), (2000, 7), (7, 2000)])
def test_crf_runs_on_at_most_its_pixel_cap_and_answers_at_photo_size(monkeypatch, shape) -> None:
    seen = []

    def fake_crf(prob, rgb, params):
        seen.append((prob.shape, rgb.shape[:2], params.appearance_sxy))
        return prob

    monkeypatch.setattr(crf, "_dense_crf", fake_crf)
    prob = np.random.default_rng(0).random(shape, dtype=np.float32)
    rgb = np.zeros((*shape, 3), np.uint8)
    out = crf.refine(prob, rgb, max_pixels=10_000)
    ((small, small_rgb, sxy),) = seen
    assert small == small_rgb and small[0] * small[1] <= 10_000
    assert sxy < crf.CRFParams().appearance_sxy  # kernel widths shrink with the photo
    assert out.shape == shape and out.dtype == np.float32
    seen.clear()
    crf.refine(prob[:50, :50], rgb[:50, :50], max_pixels=10_000)
    assert seen[0][0] == prob[:50, :50].shape  # under the cap: the photo's own size


def test_downscaled_crf_agrees_with_the_full_size_crf() -> None:
    pytest.importorskip("pydensecrf.densecrf")
    h, w = 240, 320
    rgb = left_red(h, w)
    prob = np.full((h, w), 0.3, np.float32)
    prob[:, : w // 2 + 20] = 0.7  # the network's guess spills over the red half's edge
    full = crf.refine(prob, rgb, max_pixels=h * w) >= 0.5
    small = crf.refine(prob, rgb, max_pixels=h * w // 9) >= 0.5
    assert (full & small).sum() / max(1, (full | small).sum()) > 0.95
