"""Output files: an unusable destination is one clear line (exit 2 / OutputError), and a failed
write never leaves a half-written mask or a temporary file behind."""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from refseg.errors import OutputError
from refseg.io import save_mask_png
from tests.fixtures.contracts import assert_one_line_error
from tests.fixtures.photos import encode, left_half, left_red


@pytest.fixture()
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    path.write_bytes(encode(Image.fromarray(left_red(20, 30)), "PNG"))
    return path


def segment(cli, photo: Path, checkpoint: Path, *options: object) -> tuple[int, str, str]:
    return cli("segment", photo, "the red half", "--model", checkpoint, *options)


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_output_that_is_a_directory_exits_2(cli, red_checkpoint, photo, tmp_path) -> None:
    assert_one_line_error(*segment(cli, photo, red_checkpoint, "-o", tmp_path)[::2], "is a directory")
    (tmp_path / "o").mkdir()
    assert_one_line_error(*segment(cli, photo, red_checkpoint, "--overlay", tmp_path / "o")[::2], "is a directory")


def test_output_in_a_missing_folder_exits_2(cli, red_checkpoint, photo, tmp_path) -> None:
    code, _, err = segment(cli, photo, red_checkpoint, "-o", tmp_path / "no" / "such" / "m.png")
    assert_one_line_error(code, err, "does not exist")


def test_output_in_a_read_only_system_folder_exits_2(cli, red_checkpoint, photo) -> None:
    if not Path("/proc/self").is_dir():
        pytest.skip("needs /proc")
    code, _, err = segment(cli, photo, red_checkpoint, "-o", "/proc/self/mask.png")
    assert_one_line_error(code, err, "not writable")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_output_in_a_folder_without_write_permission_exits_2(cli, red_checkpoint, photo, tmp_path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, _, err = segment(cli, photo, red_checkpoint, "-o", locked / "m.png")
    finally:
        locked.chmod(0o700)
    assert_one_line_error(code, err, "not writable")
    assert files_in(locked) == []


def test_permission_refused_when_creating_the_file_exits_2(cli, red_checkpoint, photo, tmp_path, monkeypatch) -> None:
    """Permission checks can pass and the create still fail (ACLs, root-squash NFS, SELinux)."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    code, _, err = segment(cli, photo, red_checkpoint, "-o", out_dir / "m.png")
    assert_one_line_error(code, err, "permission denied")
    assert files_in(out_dir) == []


@pytest.mark.parametrize("failing", ["write", "fsync", "rename"])
def test_failed_write_leaves_no_partial_mask_and_keeps_the_old_one(
    cli, red_checkpoint, photo, tmp_path, monkeypatch, failing: str
) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    old = out_dir / "old.png"
    save_mask_png(old, np.ones((3, 3), dtype=bool))
    before = old.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if failing == "write":
        real_fdopen = os.fdopen

        def fdopen_that_fails_halfway(fd, *args, **kwargs):
            handle = real_fdopen(fd, *args, **kwargs)
            real_write = handle.write

            def write(data):
                real_write(data[: len(data) // 2])
                handle.flush()
                disk_full()

            handle.write = write
            return handle

        monkeypatch.setattr(os, "fdopen", fdopen_that_fails_halfway)
    else:
        monkeypatch.setattr(os, "fsync" if failing == "fsync" else "replace", disk_full)
    for target in (out_dir / "new.png", old):
        code, _, err = segment(cli, photo, red_checkpoint, "-o", target)
        assert_one_line_error(code, err, "no space left")
    monkeypatch.undo()
    assert files_in(out_dir) == ["old.png"] and old.read_bytes() == before


def test_successful_segment_writes_a_complete_mask_and_nothing_else(cli, red_checkpoint, photo, tmp_path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, _, err = segment(cli, photo, red_checkpoint, "-o", out_dir / "m.png", "--overlay", out_dir / "o.png")
    assert code == 0, err
    assert files_in(out_dir) == ["m.png", "o.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(out_dir / "m.png")) > 127, left_half(20, 30))


def test_library_writers_raise_output_error(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="is a directory"):
        save_mask_png(tmp_path, np.zeros((2, 2), dtype=bool))
    with pytest.raises(OutputError, match="does not exist"):
        save_mask_png(tmp_path / "missing" / "m.png", np.zeros((2, 2), dtype=bool))
