"""Odd and broken photos through the three surfaces: valid odd images give a mask at the
displayed size, broken ones one clear line (CLI exit 2, ImageError, HTTP 4xx JSON)."""
from __future__ import annotations

import io
import resource
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from refseg.data import images
from refseg.data.images import image_shape, load_image
from refseg.errors import ImageError, ImageTooLargeError
from tests.fixtures.contracts import assert_json_error, assert_one_line_error
from tests.fixtures.photos import BROKEN_IMAGES, VALID_IMAGES, encode, left_half, left_red, png_claiming_size, sixteen_bit_png

TEXT = "the red half"


def expected_mask(name: str) -> np.ndarray:
    _, (h, w), red_visible = VALID_IMAGES[name]
    return left_half(h, w) if red_visible else np.zeros((h, w), dtype=bool)


def assert_mask_follows_display(mask: np.ndarray, name: str) -> None:
    expected = expected_mask(name)
    assert mask.shape == expected.shape
    if expected.any():
        iou = (mask & expected).sum() / (mask | expected).sum()
        assert iou > 0.9, iou
    else:
        assert not mask.any()


# --------------------------------------------------------------------------- valid odd photos


@pytest.mark.parametrize("name", sorted(VALID_IMAGES))
def test_api_segments_odd_photos_at_their_displayed_size(segmenter, name: str, tmp_path: Path) -> None:
    path = tmp_path / f"{name}.img"
    path.write_bytes(VALID_IMAGES[name][0]())
    assert_mask_follows_display(segmenter.predict(path, TEXT).mask, name)


@pytest.mark.parametrize("name", ["thin_1x4000", "cmyk_jpeg", "palette_png", "exif_orientation_6", "exif_orientation_8"])
def test_cli_writes_the_mask_of_odd_photos_at_their_displayed_size(cli, red_checkpoint, name, tmp_path) -> None:
    photo, out = tmp_path / "photo", tmp_path / "mask.png"
    photo.write_bytes(VALID_IMAGES[name][0]())
    code, _, err = cli("segment", photo, TEXT, "-o", out, "--model", red_checkpoint)
    assert code == 0, err
    assert_mask_follows_display(np.asarray(Image.open(out)) > 127, name)


@pytest.mark.parametrize("name", sorted(VALID_IMAGES))
def test_server_segments_odd_photos_at_their_displayed_size(client, name: str) -> None:
    response = client.post("/segment", files={"image": ("photo", VALID_IMAGES[name][0]())}, data={"text": TEXT})
    assert response.status_code == 200, response.text
    assert_mask_follows_display(np.asarray(Image.open(io.BytesIO(response.content))) > 127, name)


@pytest.mark.parametrize("name", sorted(VALID_IMAGES))
def test_header_shape_is_the_decoded_shape(name: str, tmp_path: Path) -> None:
    """image_shape reads the header only (cached-feature training needs just the size) and agrees
    with the decoded, EXIF-turned image."""
    path = tmp_path / f"{name}.img"
    path.write_bytes(VALID_IMAGES[name][0]())
    assert image_shape(path) == load_image(path).shape[:2] == VALID_IMAGES[name][1]


def test_header_shape_of_a_broken_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"not an image at all")
    with pytest.raises(ImageError, match="not a readable image") as info:
        image_shape(path)
    assert "\n" not in str(info.value)
    with pytest.raises(ImageError, match="not found"):
        image_shape(tmp_path / "missing.jpg")


def test_sixteen_bit_png_keeps_its_full_range() -> None:
    rgb = load_image(sixteen_bit_png(4, 64))
    ramp = np.linspace(0, 65535, 64).round()
    assert rgb.dtype == np.uint8 and rgb.shape == (4, 64, 3)
    np.testing.assert_array_equal(rgb[0, :, 0], np.clip(np.round(ramp / 257), 0, 255))


def test_transparent_pixels_become_white_not_black() -> None:
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (220, 30, 30, 255)  # one opaque red pixel, the rest fully transparent black
    rgb = load_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert tuple(rgb[0, 0]) == (220, 30, 30) and (rgb[1, 1] == 255).all()


# --------------------------------------------------------------------------- broken photos


def _broken_file(tmp_path: Path, name: str) -> Path:
    file_name, build, _ = BROKEN_IMAGES[name]
    path = tmp_path / file_name
    path.write_bytes(build())
    return path


@pytest.mark.parametrize("name", sorted(BROKEN_IMAGES))
def test_api_broken_photo_is_an_image_error(segmenter, name: str, tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=BROKEN_IMAGES[name][2]) as info:
        segmenter.predict(_broken_file(tmp_path, name), TEXT)
    assert "\n" not in str(info.value)


def test_api_missing_path_and_directory_are_image_errors(segmenter, tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="not found"):
        segmenter.predict(tmp_path / "nowhere.jpg", TEXT)
    with pytest.raises(ImageError, match="directory"):
        segmenter.predict(tmp_path, TEXT)
    with pytest.raises(ImageError, match="not found|cannot read"):
        segmenter.predict("bad\0name.jpg", TEXT)


@pytest.mark.parametrize("name", sorted(BROKEN_IMAGES))
def test_cli_broken_photo_exits_2_with_one_line(cli, red_checkpoint, name: str, tmp_path: Path) -> None:
    out = tmp_path / "mask.png"
    code, _, err = cli("segment", _broken_file(tmp_path, name), TEXT, "-o", out, "--model", red_checkpoint)
    assert_one_line_error(code, err, BROKEN_IMAGES[name][2])
    assert not out.exists()


@pytest.mark.parametrize("where", ["missing", "directory"])
def test_cli_missing_or_directory_photo_exits_2(cli, red_checkpoint, where: str, tmp_path: Path) -> None:
    photo = tmp_path / "nowhere.jpg" if where == "missing" else tmp_path
    code, _, err = cli("segment", photo, TEXT, "-o", tmp_path / "m.png", "--model", red_checkpoint)
    assert_one_line_error(code, err, "not found" if where == "missing" else "directory")


@pytest.mark.parametrize("name", sorted(BROKEN_IMAGES))
def test_server_broken_photo_is_4xx_json(client, name: str) -> None:
    file_name, build, phrase = BROKEN_IMAGES[name]
    response = client.post("/segment", files={"image": (file_name, build())}, data={"text": TEXT})
    assert_json_error(response, 413 if name.startswith("bomb") else 422, phrase)


# --------------------------------------------------------------------------- decompression bombs


@pytest.mark.parametrize("width, height", [(50_000, 50_000), (8_000, 6_000)])
def test_bomb_is_refused_from_its_header_without_decoding(monkeypatch, width: int, height: int) -> None:
    data = png_claiming_size(width, height)
    with monkeypatch.context() as patch:  # the header is well-formed: without any limit it opens
        patch.setattr(Image, "MAX_IMAGE_PIXELS", None)
        assert Image.open(io.BytesIO(data)).size == (width, height)
    decoded = []
    original_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.size) or original_load(self))
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageTooLargeError, match="too large"):
        load_image(data)
    peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert decoded == []  # no decoder ran
    assert (peak_after - peak_before) * 1024 < 50 * 2**20  # ru_maxrss is in KiB on Linux


def test_the_crafted_header_is_a_real_png_that_pillow_would_decode(monkeypatch) -> None:
    """The bomb fixture is meaningful: below the limit, the same kind of file reaches the decoder."""
    decoded = []
    original_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.size) or original_load(self))
    with pytest.raises(ImageError):  # the tiny IDAT runs out → truncated
        load_image(png_claiming_size(300, 200))
    assert decoded == [(300, 200)]


# --------------------------------------------------------------------------- fuzzing the decoder


def _seed_files() -> list[bytes]:
    rgb = left_red(12, 16)
    return [encode(Image.fromarray(rgb), "PNG"), encode(Image.fromarray(rgb), "JPEG"), encode(Image.fromarray(rgb), "GIF")]


SEEDS = _seed_files()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.sampled_from(range(len(SEEDS))),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=8),
    cut=st.integers(1, 10_000),
)
def test_mutated_files_decode_or_raise_image_error(seed: int, edits, cut: int) -> None:
    data = bytearray(SEEDS[seed])
    for position, value in edits:
        data[position % len(data)] = value
    data = bytes(data[: max(1, cut % (len(data) + 1))])
    try:
        rgb = load_image(data, max_pixels=1_000_000)
    except ImageError:
        return
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3 and min(rgb.shape[:2]) >= 1


def test_header_shape_of_arrays_checks_without_converting(monkeypatch) -> None:
    converted_shape = load_image(np.zeros((7, 5))).shape[:2]

    def no_conversion(arr):
        raise AssertionError("image_shape converted the array")

    monkeypatch.setattr(images, "_array_to_rgb", no_conversion)
    assert image_shape(np.zeros((7, 5), dtype=np.float64)) == converted_shape == (7, 5)
    assert image_shape(np.zeros((3, 4, 4), dtype=np.uint8)) == (3, 4)
    with pytest.raises(ImageError, match="HxW"):
        image_shape(np.zeros((3, 4, 2)))
