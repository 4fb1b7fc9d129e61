"""Class 1 of issue 24: an output never destroys what it should not.

refseg writes regular files only: a device, FIFO or socket (or a link to one) is refused, an
output that is an input photo is refused, and names taken from data (sample ids) never leave
their folder. Each case checks the one-line error *and* that the target is unchanged.
"""
from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from refseg.errors import OutputError
from refseg.io import child_path, save_mask_png
from tests.fixtures.contracts import assert_one_line_error
from tests.fixtures.photos import encode, left_red

PHOTO_BYTES = encode(Image.fromarray(left_red(20, 30)), "PNG")


@pytest.fixture()
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    path.write_bytes(PHOTO_BYTES)
    return path


def _fifo(folder: Path, photo: Path) -> Path:
    os.mkfifo(folder / "fifo")
    return folder / "fifo"


def _socket(folder: Path, photo: Path) -> Path:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(folder / "sock"))
    sock.close()
    return folder / "sock"


def _link_to(target: str):
    def make(folder: Path, photo: Path) -> Path:
        (folder / "link").symlink_to(target)
        return folder / "link"

    return make


def _hard_link_to_photo(folder: Path, photo: Path) -> Path:
    os.link(photo, folder / "same.png")
    return folder / "same.png"


# name -> (make the hostile target, phrase of the error)
HOSTILE_TARGETS = {
    "fifo": (_fifo, "not a regular file"),
    "unix_socket": (_socket, "not a regular file"),
    "link_to_dev_null": (_link_to("/dev/null"), "not a regular file"),
    "link_to_dev_full": (_link_to("/dev/full"), "not a regular file"),
    "the_input_photo": (lambda folder, photo: photo, "is an input file"),
    "link_to_the_input_photo": (lambda folder, photo: _link_to(str(photo))(folder, photo), "is an input file"),
    "hard_link_to_the_input_photo": (_hard_link_to_photo, "is an input file"),
}


def _fingerprint(path: Path) -> tuple:
    info = path.lstat()
    content = path.read_bytes() if stat.S_ISREG(info.st_mode) else b""
    return stat.S_IFMT(info.st_mode), content, os.readlink(path) if path.is_symlink() else None


@pytest.mark.parametrize("option", ["-o", "--overlay", "--heatmap"])
@pytest.mark.parametrize("name", sorted(HOSTILE_TARGETS))
def test_cli_refuses_hostile_output_targets_and_leaves_them_intact(
    cli, red_checkpoint, photo, tmp_path, name, option
) -> None:
    make, phrase = HOSTILE_TARGETS[name]
    target = make(tmp_path, photo)
    before, photo_before = _fingerprint(target), photo.read_bytes()
    extra = [] if option == "-o" else ["-o", tmp_path / "mask.png"]
    code, _, err = cli("segment", photo, "the red half", "--model", red_checkpoint, option, target, *extra)
    assert_one_line_error(code, err, phrase)
    assert _fingerprint(target) == before and photo.read_bytes() == photo_before
    assert not (tmp_path / "mask.png").exists()  # refused before anything was written


def test_cli_refuses_two_outputs_naming_the_same_file(cli, red_checkpoint, photo, tmp_path) -> None:
    code, _, err = cli("segment", photo, "x", "--model", red_checkpoint, "-o", tmp_path / "a.png",
                       "--overlay", tmp_path / "a.png")
    assert_one_line_error(code, err, "same file")


@pytest.mark.parametrize("name", ["fifo", "unix_socket", "link_to_dev_null", "link_to_dev_full"])
def test_library_writers_refuse_special_files(tmp_path, photo, name) -> None:
    target = HOSTILE_TARGETS[name][0](tmp_path, photo)
    before = _fingerprint(target)
    with pytest.raises(OutputError, match="not a regular file"):
        save_mask_png(target, np.ones((2, 2), dtype=bool))
    assert _fingerprint(target) == before


ESCAPING_IDS = ["../escape", "../../escape", "a/../../escape", "/tmp/refseg-escape", "", ".", "..", "x\x00y"]


@pytest.mark.parametrize("sample_id", ESCAPING_IDS)
def test_child_path_refuses_names_leaving_the_folder(tmp_path, sample_id) -> None:
    with pytest.raises(OutputError, match="does not name a file inside"):
        child_path(tmp_path / "preds", sample_id)


@settings(max_examples=200, deadline=None)
@given(name=st.text(min_size=1, max_size=30))
def test_child_path_is_inside_its_folder_or_refused(tmp_path_factory, name) -> None:
    folder = tmp_path_factory.getbasetemp() / "children"
    try:
        path = child_path(folder, name)
    except OutputError:
        return
    assert folder.resolve() in path.resolve().parents


@pytest.mark.parametrize("sample_id", ["../../escaped", "/tmp/refseg-escaped-absolute"])
@pytest.mark.parametrize("flag", ["--save-pred", "--pred-dir"])
def test_eval_refuses_sample_ids_that_leave_the_prediction_folder(
    cli, red_checkpoint, photo, tmp_path, sample_id, flag
) -> None:
    manifest = tmp_path / "data" / "refs.jsonl"
    manifest.parent.mkdir()
    record = {"id": sample_id, "image": str(photo), "sentence": "the red half", "mask": None}
    manifest.write_text(json.dumps(record) + "\n")
    preds = tmp_path / "data" / "preds"
    preds.mkdir()
    model = ["--model", red_checkpoint] if flag == "--save-pred" else []
    code, _, err = cli("eval", "--data", manifest, flag, preds, *model)
    assert_one_line_error(code, err, "does not name a file inside")
    assert not Path(f"{sample_id}.png").exists() and not (tmp_path / "escaped.png").exists()
    assert list(preds.iterdir()) == []
