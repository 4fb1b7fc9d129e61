"""`refseg segment` and `refseg demo`: outputs on success, exit 2 + one stderr line on bad input."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from refseg.cli import main
from tests.fixtures.photos import red_square_photo
from tests.fixtures.red_model import save_red_model


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    return str(save_red_model(tmp_path_factory.mktemp("model"), image_size=96))


@pytest.fixture()
def photo(tmp_path: Path) -> tuple[Path, np.ndarray]:
    rgb, mask = red_square_photo(75, 121, (10, 20, 60, 90))
    path = tmp_path / "photo.jpg"
    Image.fromarray(rgb).save(path, quality=95)
    return path, mask


def run(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
        raise SystemExit(0)
    captured = capsys.readouterr()
    return exit_info.value.code or 0, captured.out, captured.err


def test_segment_writes_mask_overlay_and_heatmap(photo, model, tmp_path: Path, capsys) -> None:
    image, target = photo
    out, overlay, heat = tmp_path / "m.png", tmp_path / "o.png", tmp_path / "h.png"
    code, stdout, _ = run(
        ["segment", str(image), "the red box", "-o", str(out), "--overlay", str(overlay),
         "--heatmap", str(heat), "--model", model], capsys)
    assert code == 0
    mask = np.asarray(Image.open(out))
    assert mask.shape == target.shape and set(np.unique(mask)) <= {0, 255}
    assert ((mask == 255) & target).sum() / ((mask == 255) | target).sum() > 0.9
    for path in (overlay, heat):
        assert Image.open(path).size == (121, 75)
    assert stdout.count("\n") == 1 and "area" in stdout and "confidence" in stdout


def test_segment_default_output_is_stem_mask_png_in_current_folder(photo, model, tmp_path, monkeypatch, capsys):
    image, _ = photo
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    code, _, _ = run(["segment", str(image), "red", "--model", model], capsys)
    assert code == 0
    assert Image.open(workdir / "photo.mask.png").size == (121, 75)


@pytest.mark.parametrize(
    "case",
    ["missing image", "not an image", "empty text", "output is a folder", "output folder missing", "missing model"],
)
def test_segment_bad_input_exits_2_with_one_line(case, photo, model, tmp_path: Path, capsys) -> None:
    image, _ = photo
    args = {"image": str(image), "text": "red", "out": str(tmp_path / "m.png"), "model": model}
    if case == "missing image":
        args["image"] = str(tmp_path / "nope.jpg")
    elif case == "not an image":
        (tmp_path / "fake.jpg").write_text("hello")
        args["image"] = str(tmp_path / "fake.jpg")
    elif case == "empty text":
        args["text"] = "  "
    elif case == "output is a folder":
        args["out"] = str(tmp_path)
    elif case == "output folder missing":
        args["out"] = str(tmp_path / "no" / "such" / "m.png")
    else:
        args["model"] = str(tmp_path / "missing.safetensors")
    code, stdout, stderr = run(
        ["segment", args["image"], args["text"], "-o", args["out"], "--model", args["model"]], capsys)
    assert code == 2
    assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    assert not (tmp_path / "m.png").exists()


def test_segment_threshold_out_of_range_is_a_usage_error(photo, model, capsys) -> None:
    image, _ = photo
    code, _, stderr = run(["segment", str(image), "red", "--threshold", "2", "--model", model], capsys)
    assert code == 2 and "threshold" in stderr


def test_demo_writes_gallery_and_overlays(model, tmp_path: Path, capsys) -> None:
    from refseg.samples import SAMPLES

    out = tmp_path / "demo"
    code, stdout, _ = run(["demo", "--out", str(out), "--model", model], capsys)
    assert code == 0
    index = out / "index.html"
    assert stdout.strip() == str(index)
    html = index.read_text()
    for sample in SAMPLES:
        rgb = sample.load()
        assert Image.open(out / f"{sample.name}.png").size == (rgb.shape[1], rgb.shape[0])
        for k, expression in enumerate(sample.expressions):
            assert (out / f"{sample.name}-{k}.overlay.png").is_file()
            assert f'src="{sample.name}-{k}.overlay.png"' in html
            assert expression.replace("'", "&#x27;") in html
        assert (out / f"{sample.name}-0.words.png").is_file()  # the test model has word maps
        assert (out / f"{sample.name}-0.attention.png").is_file()  # ... and word attention


def test_demo_into_a_file_exits_2(model, tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, stderr = run(["demo", "--out", str(blocker), "--model", model], capsys)
    assert code == 2 and stderr.count("\n") == 1


def test_segment_crf_without_the_extra_exits_2(photo, model, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    image, _ = photo
    code, _, stderr = run(["segment", str(image), "red", "--crf", "-o", str(tmp_path / "m.png"), "--model", model], capsys)
    assert code == 2 and "refseg[crf]" in stderr and stderr.count("\n") == 1
    assert not (tmp_path / "m.png").exists()


def test_segment_with_crf_writes_the_mask(photo, model, tmp_path: Path, capsys) -> None:
    pytest.importorskip("pydensecrf.densecrf")
    image, target = photo
    code, _, _ = run(["segment", str(image), "red", "--crf", "-o", str(tmp_path / "m.png"), "--model", model], capsys)
    assert code == 0
    mask = np.asarray(Image.open(tmp_path / "m.png")) == 255
    assert (mask & target).sum() / (mask | target).sum() > 0.9


def test_segment_says_nothing_found_for_an_empty_mask(model, tmp_path: Path, capsys) -> None:
    blue = tmp_path / "blue.png"
    Image.fromarray(np.full((40, 60, 3), (0, 0, 200), np.uint8)).save(blue)
    code, stdout, _ = run(["segment", str(blue), "the red box", "-o", str(tmp_path / "m.png"), "--model", model], capsys)
    assert code == 0 and stdout.count("\n") == 1
    assert "nothing found for 'the red box'" in stdout
    assert not np.asarray(Image.open(tmp_path / "m.png")).any()


def test_candidates_picture_needs_an_instance_aware_model(photo, model, tmp_path: Path, capsys) -> None:
    from refseg.engine.checkpoint import save_model
    from refseg.models import create_model

    image, _ = photo
    instance = save_model(tmp_path / "instance.safetensors", create_model("instance_ref").eval(), {"image_size": 96})
    picture = tmp_path / "c.png"
    code, stdout, _ = run(["segment", str(image), "the red box", "-o", str(tmp_path / "m.png"),
                           "--candidates", str(picture), "-m", str(instance)], capsys)
    assert code == 0 and Image.open(picture).size == (121, 75)
    code, _, err = run(["segment", str(image), "the red box", "-o", str(tmp_path / "n.png"),
                        "--candidates", str(tmp_path / "d.png"), "-m", model], capsys)
    assert code == 2 and err.count("\n") == 1 and "instance-aware" in err
    assert not (tmp_path / "n.png").exists(), "nothing is written when the request cannot be met"


def test_cli_shows_user_warnings_as_one_line_and_hides_library_deprecations(capsys) -> None:
    import warnings

    from refseg.cli import _show_warning

    _show_warning(UserWarning("expression has 25 words"), UserWarning, "x.py", 1)
    _show_warning(DeprecationWarning("__array__ implementation doesn't accept a copy keyword"), DeprecationWarning, "y.py", 2)
    assert capsys.readouterr().err == "warning: expression has 25 words\n"
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = _show_warning
        warnings.warn("old API", DeprecationWarning)
    assert capsys.readouterr().err == ""
