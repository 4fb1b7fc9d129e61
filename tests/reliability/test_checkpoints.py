"""Checkpoints: loading never executes code; corrupt, truncated, bogus and wrong-architecture
files give one clear line (API CheckpointError, CLI exit 2); saves are atomic even when the
writer is killed."""
from __future__ import annotations

import json
import os
import re
import shlex
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from refseg.api import Segmenter
from refseg.engine.checkpoint import load_model, load_training_state, save_model, save_training_state
from refseg.errors import CheckpointError, OutputError
from refseg.io import STALE_TEMP_AGE_S, atomic_write_bytes, remove_stale_temp_files
from tests.fixtures.contracts import assert_one_line_error
from tests.fixtures.photos import encode, left_red
from tests.fixtures.red_model import RedModel


class WritesAFile:
    """A pickle payload: unpickling it runs ``touch <path>``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.path))}",)


def malicious_state(path: Path, marker: Path) -> Path:
    torch.save({"epoch": 1, "step": 5, "optimizer": WritesAFile(marker)}, path)
    return path


def test_the_payload_is_armed(tmp_path: Path) -> None:
    """Sanity check of the fixture: an unsafe torch.load really writes the file."""
    marker = tmp_path / "pwned"
    torch.load(malicious_state(tmp_path / "state.pt", marker), weights_only=False)
    assert marker.exists()


def test_training_state_with_code_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        load_training_state(malicious_state(tmp_path / "last_state.pt", marker))
    assert not marker.exists()


def test_pickle_disguised_as_safetensors_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    fake = malicious_state(tmp_path / "model.safetensors", marker)
    with pytest.raises(CheckpointError, match="not a readable refseg checkpoint"):
        Segmenter.from_pretrained(fake)
    assert not marker.exists()


def test_cli_resume_from_a_state_with_code_exits_2_without_running_it(cli, tmp_path: Path) -> None:
    from refseg.models.base import create_model

    config = tmp_path / "tiny.yaml"
    config.write_text(textwrap.dedent(f"""\
        model: {{name: lstm_cnn, vocab: [red], hidden: 8, classifier: 8}}
        data:
          image_size: 64
          train: [{{kind: shaperef, n: 8, seed: 0, split: train, options: {{size: 64}}}}]
        train: {{epochs: 1, batch_size: 4, progress: false, out_dir: {tmp_path / 'run'}}}
        """))
    run = tmp_path / "run"
    run.mkdir()
    from refseg.config import load_config, to_dict

    save_model(run / "last.safetensors", create_model("lstm_cnn", vocab=["red"], hidden=8, classifier=8),
               {"train_config": to_dict(load_config(config))})
    marker = tmp_path / "pwned"
    malicious_state(run / "last_state.pt", marker)
    code, _, err = cli("train", config, "--resume", run)
    assert_one_line_error(code, err, "cannot be loaded safely")
    assert not marker.exists()


# --------------------------------------------------------------------------- corrupt model files


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return save_model(tmp_path_factory.mktemp("good") / "red.safetensors", RedModel(max_words=6), {"image_size": 64})


def _header_only(header: bytes) -> bytes:
    return struct.pack("<Q", len(header)) + header


def _rewritten(good: Path, out: Path, tensors=None, **metadata: str) -> bytes:
    """``good`` with some tensors or metadata replaced (a valid safetensors file)."""
    from safetensors import safe_open

    with safe_open(str(good), framework="pt") as f:
        meta = dict(f.metadata())
    save_file(tensors if tensors is not None else load_file(str(good)), str(out), metadata={**meta, **metadata})
    return out.read_bytes()


BAD_MODEL_FILES = {
    # name: (builder(good, tmp_path) -> bytes, phrase of the one-line error)
    "random_bytes": (lambda good, tmp: os.urandom(4096), "not a readable refseg checkpoint"),
    "truncated_in_the_header": (lambda good, tmp: good.read_bytes()[:100], "not a readable refseg checkpoint"),
    "truncated_in_the_weights": (lambda good, tmp: good.read_bytes()[:-2], "not a readable refseg checkpoint"),
    "header_length_past_the_end": (lambda good, tmp: struct.pack("<Q", 10**9) + b"{}", "not a readable refseg checkpoint"),
    "header_not_json": (lambda good, tmp: _header_only(b"this is no json!"), "not a readable refseg checkpoint"),
    "tensor_offsets_past_the_end": (
        lambda good, tmp: _header_only(json.dumps({"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}).encode()) + b"\0" * 8,
        "not a readable refseg checkpoint",
    ),
    "plain_safetensors_without_refseg_metadata": (
        lambda good, tmp: (save_file({"w": torch.zeros(3)}, str(tmp / "plain")), (tmp / "plain").read_bytes())[1],
        "not a refseg model file",
    ),
    "other_architecture_name": (lambda good, tmp: _rewritten(good, tmp / "x", model="whole_image", config="{}"), "does not match architecture"),
    "weights_of_another_shape": (
        lambda good, tmp: _rewritten(good, tmp / "x", tensors={"gain": torch.zeros(3)}), "gain: [3] in the file, [] in the model"
    ),
    "unknown_model_name": (lambda good, tmp: _rewritten(good, tmp / "x", model="no_such_model"), "cannot be rebuilt"),
    "config_the_model_does_not_accept": (
        lambda good, tmp: _rewritten(good, tmp / "x", config=json.dumps({"max_words": 6, "colour": "red"})), "does not accept"
    ),
    "config_not_a_mapping": (lambda good, tmp: _rewritten(good, tmp / "x", config="[1, 2]"), "corrupt metadata"),
    "config_not_json": (lambda good, tmp: _rewritten(good, tmp / "x", config="{oops"), "corrupt metadata"),
}


def _bad_model(good: Path, tmp_path: Path, name: str) -> Path:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(BAD_MODEL_FILES[name][0](good, tmp_path))
    return path


@pytest.mark.parametrize("name", sorted(BAD_MODEL_FILES))
def test_api_bad_model_file_is_a_checkpoint_error(good: Path, tmp_path: Path, name: str) -> None:
    with pytest.raises(CheckpointError, match=re.escape(BAD_MODEL_FILES[name][1])) as info:
        Segmenter.from_pretrained(_bad_model(good, tmp_path, name))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", sorted(BAD_MODEL_FILES))
def test_cli_bad_model_file_exits_2(cli, good: Path, tmp_path: Path, name: str) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(encode(Image.fromarray(left_red(8, 8)), "PNG"))
    code, _, err = cli("segment", photo, "red", "-o", tmp_path / "m.png", "--model", _bad_model(good, tmp_path, name))
    assert_one_line_error(code, err, BAD_MODEL_FILES[name][1])


def test_server_refuses_to_start_on_a_bad_model(cli, good: Path, tmp_path: Path, monkeypatch) -> None:
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("the server started on a corrupt checkpoint"))
    code, _, err = cli("serve", "--model", _bad_model(good, tmp_path, "truncated_in_the_weights"))
    assert_one_line_error(code, err, "checkpoint")


def test_missing_checkpoint_and_truncated_training_state(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "absent.safetensors")
    path = save_training_state(tmp_path / "state.pt", {"step": 3, "weights": torch.arange(10_000.0)})
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_training_state(path)
    torch.save(torch.zeros(2), tmp_path / "tensor.pt")
    with pytest.raises(CheckpointError, match="not a training state"):
        load_training_state(tmp_path / "tensor.pt")


# --------------------------------------------------------------------------- atomic saves


def _temp_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_failed_rename_keeps_the_previous_checkpoint_and_leaves_no_temp_file(good: Path, tmp_path: Path, monkeypatch) -> None:
    path = save_model(tmp_path / "last.safetensors", RedModel(max_words=6), {"epoch": 1})
    state = save_training_state(tmp_path / "last_state.pt", {"epoch": 1})
    before = path.read_bytes(), state.read_bytes()

    def no_rename(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_rename)
    newer = RedModel(max_words=6)
    with torch.no_grad():
        newer.gain.fill_(-1.0)
    with pytest.raises(OutputError, match="No space left"):
        save_model(path, newer, {"epoch": 2})
    with pytest.raises(OutputError, match="No space left"):
        save_training_state(state, {"epoch": 2})
    monkeypatch.undo()
    assert (path.read_bytes(), state.read_bytes()) == before
    assert _temp_files(tmp_path) == []
    assert load_model(path)[1] == {"epoch": 1}


STALL_IN_FSYNC = """
import os, sys, time
from refseg.io import atomic_write_bytes
real_fsync = os.fsync
def stall(fd):
    real_fsync(fd)
    print("written", flush=True)
    time.sleep(120)
os.fsync = stall
atomic_write_bytes(sys.argv[1], b"new!" * 4_000_000)
"""


def test_writer_killed_mid_save_leaves_the_previous_file_and_the_next_save_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "last.safetensors"
    atomic_write_bytes(target, b"previous checkpoint")
    writer = subprocess.Popen([sys.executable, "-c", STALL_IN_FSYNC, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "written"  # the 16 MB are on disk, not yet renamed
    finally:
        writer.kill()  # SIGKILL: no cleanup handler can run
        writer.wait()
    assert target.read_bytes() == b"previous checkpoint"
    (leftover,) = _temp_files(tmp_path)
    assert leftover.stat().st_size == 16_000_000
    # a temporary file of a live writer (this process) and a fresh one are never touched
    live = tmp_path / f".{target.name}.{os.getpid()}.live.tmp"
    live.write_bytes(b"")
    old = time.time() - 2 * STALE_TEMP_AGE_S
    for p in (leftover, live):
        os.utime(p, (old, old))
    atomic_write_bytes(target, b"next checkpoint")
    assert target.read_bytes() == b"next checkpoint"
    assert _temp_files(tmp_path) == [live]


def test_recent_leftover_of_a_dead_writer_is_kept_until_it_is_old(tmp_path: Path) -> None:
    target = tmp_path / "mask.png"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = tmp_path / f".{target.name}.{dead.stdout.strip()}.abc.tmp"
    leftover.write_bytes(b"partial")
    assert remove_stale_temp_files(target) == []
    old = time.time() - 2 * STALE_TEMP_AGE_S
    os.utime(leftover, (old, old))
    assert remove_stale_temp_files(target) == [leftover] and not leftover.exists()


def test_new_files_get_the_usual_permissions_and_replaced_files_keep_theirs(tmp_path: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    fresh = atomic_write_bytes(tmp_path / "fresh.png", b"x")
    assert fresh.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    kept = tmp_path / "kept.png"
    kept.write_bytes(b"old")
    kept.chmod(0o640)
    atomic_write_bytes(kept, b"new")
    assert kept.stat().st_mode & 0o777 == 0o640
