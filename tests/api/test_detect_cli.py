"""`refseg detect` and :func:`refseg.viz.boxes`: the detector's boxes listed and drawn; bad input → exit 2."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from refseg import viz
from refseg.cli import main
from refseg.errors import ConfigError
from refseg.models.detector import graph_path


def run(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
        raise SystemExit(0)
    captured = capsys.readouterr()
    return exit_info.value.code or 0, captured.out, captured.err


@pytest.fixture()
def photo(tmp_path: Path) -> Path:
    """A grey photo with a dark upright shape (whatever the detector makes of it, the command must run)."""
    rgb = np.full((120, 160, 3), 200, np.uint8)
    rgb[20:110, 60:100] = 40
    path = tmp_path / "photo.png"
    Image.fromarray(rgb).save(path)
    return path


def test_boxes_are_drawn_in_their_colours_only_around_the_box() -> None:
    rgb = np.full((60, 80, 3), 255, np.uint8)
    out = viz.boxes(rgb, np.array([[10, 30, 50, 55]], np.float32), ["cat 0.90"])
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert (out[45, 10] == viz.PALETTE[0]).all() and (out[55, 30] == viz.PALETTE[0]).all()  # left and bottom edges
    assert (out[40:50, 20:40] == 255).all()  # inside untouched
    assert not (out[15:30, 10:40] == 255).all()  # the caption sits above the box
    assert (out[:, 60:] == 255).all()


def test_detect_lists_and_draws(photo: Path, tmp_path: Path, capsys) -> None:
    try:
        graph_path()
    except ConfigError as err:
        pytest.skip(str(err))
    out = tmp_path / "boxes.png"
    code, stdout, stderr = run(["detect", str(photo), "--boxes", str(out), "--threshold", "0.01", "--size", "128"], capsys)
    assert code == 0, stderr
    lines = stdout.strip().splitlines()
    assert lines[-1] == f"{out}: {len(lines) - 1} detections" and len(lines) > 1
    name_score, coords = lines[0].split("  ")
    assert 0.01 <= float(name_score.split()[-1]) <= 1 and len(coords.split()) == 4
    assert Image.open(out).size == (160, 120)


@pytest.mark.parametrize("case", ["missing image", "missing folder", "bad size"])
def test_detect_bad_input_is_exit_2(photo: Path, tmp_path: Path, case: str, capsys) -> None:
    args = {
        "missing image": ["detect", str(tmp_path / "nope.jpg")],
        "missing folder": ["detect", str(photo), "--boxes", str(tmp_path / "no" / "b.png")],
        "bad size": ["detect", str(photo), "--size", "10"],
    }[case]
    code, _, stderr = run(args, capsys)
    assert code == 2 and "Traceback" not in stderr
    if case != "bad size":  # usage errors print click's usage block
        assert len(stderr.strip().splitlines()) == 1 and stderr.startswith("error: ")
