"""Class 3 of issue 24: every part of a model file is validated before it is used.

Metadata of the wrong type, a config that would allocate far more than the file holds, weights
of a dtype the model cannot take, non-finite weights and a ``--model`` that is no regular file
are one-line CheckpointErrors on every surface (API, ``refseg segment``, ``refseg serve``).
"""
from __future__ import annotations

import json
import os
import re
import threading
import tracemalloc
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from refseg.api import Segmenter
from refseg.engine.checkpoint import load_model, save_model
from refseg.errors import CheckpointError
from tests.fixtures.contracts import assert_one_line_error
from tests.fixtures.photos import encode, left_red
from tests.fixtures.red_model import RedModel


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return save_model(tmp_path_factory.mktemp("good") / "red.safetensors", RedModel(max_words=6), {"image_size": 64})


def _variant(good: Path, out: Path, gain: torch.Tensor | None = None, **metadata: str) -> Path:
    with safe_open(str(good), framework="pt") as f:
        meta = dict(f.metadata())
    save_file({"gain": torch.tensor(8.0) if gain is None else gain}, str(out), metadata={**meta, **metadata})
    return out


META_CASES = {  # the JSON stored as "meta" -> phrase of the error
    "null": ("null", "corrupt metadata"),
    "list": ("[1, 2]", "corrupt metadata"),
    "string": ('"big"', "corrupt metadata"),
    "number": ("3", "corrupt metadata"),
    "image_size_string": ('{"image_size": "abc"}', "image_size must be a whole number"),
    "image_size_bool": ('{"image_size": true}', "image_size must be a whole number"),
    "image_size_fraction": ('{"image_size": 64.5}', "image_size must be a whole number"),
    "image_size_zero": ('{"image_size": 0}', "between 32 and 2048"),
    "image_size_negative": ('{"image_size": -64}', "between 32 and 2048"),
    "image_size_huge": ('{"image_size": 100000}', "between 32 and 2048"),
    "image_size_infinite": ('{"image_size": Infinity}', "image_size"),
    "threshold_string": ('{"threshold": "high"}', "threshold must be a number in (0, 1)"),
    "threshold_list": ('{"threshold": [0.5]}', "threshold must be a number in (0, 1)"),
    "threshold_nan": ('{"threshold": NaN}', "threshold must be a number in (0, 1)"),
    "threshold_above_one": ('{"threshold": 2}', "threshold must be a number in (0, 1)"),
    "threshold_bool": ('{"threshold": true}', "threshold must be a number in (0, 1)"),
}

BAD_DTYPES = {
    "bool": torch.tensor(True),
    "int8": torch.tensor(8, dtype=torch.int8),
    "int64": torch.tensor(8),
    "uint8": torch.tensor(8, dtype=torch.uint8),
    "complex64": torch.tensor(8 + 0j, dtype=torch.complex64),
    "float8_e4m3fn": torch.tensor(8.0).to(torch.float8_e4m3fn),
    "float8_e5m2": torch.tensor(8.0).to(torch.float8_e5m2),
}
NON_FINITE = {"nan": float("nan"), "inf": float("inf"), "minus_inf": float("-inf")}


def _hostile_files() -> dict[str, tuple]:
    """name -> (builder(good, out) -> path, phrase)."""
    cases = {f"meta_{k}": (lambda g, o, m=m: _variant(g, o, meta=m), p) for k, (m, p) in META_CASES.items()}
    cases.update({f"dtype_{k}": (lambda g, o, t=t: _variant(g, o, gain=t), "has dtype") for k, t in BAD_DTYPES.items()})
    cases.update({
        f"weights_{k}": (lambda g, o, v=v: _variant(g, o, gain=torch.tensor(v)), "NaN or infinite") for k, v in NON_FINITE.items()
    })
    cases["config_asking_for_terabytes"] = (
        lambda g, o: _variant(g, o, model="lstm_cnn", config=json.dumps({"classifier": 10**9})), "would allocate far more"
    )
    cases["config_asking_for_terabytes_in_many_layers"] = (
        lambda g, o: _variant(g, o, model="lstm_cnn", config=json.dumps({"classifier": 3 * 10**6})), "would allocate far more"
    )
    return cases


HOSTILE = _hostile_files()


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_api_refuses_half_valid_checkpoints(good, tmp_path, name) -> None:
    build, phrase = HOSTILE[name]
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match=re.escape(phrase)) as info:
            Segmenter.from_pretrained(build(good, tmp_path / "bad.safetensors"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "\n" not in str(info.value)
    assert peak < 512 * 2**20  # refused before the big allocation (numpy/python side)


@pytest.mark.parametrize("name", ["meta_null", "meta_image_size_string", "meta_threshold_string", "weights_nan",
                                  "dtype_complex64", "config_asking_for_terabytes"])
def test_cli_segment_and_serve_refuse_half_valid_checkpoints(cli, good, tmp_path, monkeypatch, name) -> None:
    import uvicorn

    build, phrase = HOSTILE[name]
    model = build(good, tmp_path / "bad.safetensors")
    photo = tmp_path / "photo.png"
    photo.write_bytes(encode(Image.fromarray(left_red(8, 8)), "PNG"))
    assert_one_line_error(*cli("segment", photo, "red", "-o", tmp_path / "m.png", "--model", model)[::2], phrase)
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("the server started on a bad checkpoint"))
    assert_one_line_error(*cli("serve", "--model", model)[::2], phrase)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_dtypes_load_and_are_cast(good, tmp_path, dtype) -> None:
    model, _ = load_model(_variant(good, tmp_path / "ok.safetensors", gain=torch.tensor(8.0, dtype=dtype)))
    assert model.gain.dtype == torch.float32 and float(model.gain.detach()) == 8.0


def _loads_within(path: Path, seconds: float) -> BaseException | None:
    """Load ``path`` on a daemon thread; the exception it raised (a hang fails the test)."""
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            load_model(path)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"loading {path} hangs"
    return outcome[0]


@pytest.mark.parametrize("kind", ["fifo.safetensors", "fifo_named_plainly", "dev_zero_link.safetensors"])
def test_model_that_is_no_regular_file_is_refused_without_hanging(tmp_path, kind) -> None:
    path = tmp_path / kind
    if kind.startswith("fifo"):
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    error = _loads_within(path, 10.0)
    assert isinstance(error, CheckpointError) and "not a regular file" in str(error)


def test_cli_model_fifo_exits_2(cli, tmp_path) -> None:
    os.mkfifo(tmp_path / "m.safetensors")
    photo = tmp_path / "photo.png"
    photo.write_bytes(encode(Image.fromarray(left_red(8, 8)), "PNG"))
    code, _, err = cli("segment", photo, "red", "-o", tmp_path / "m.png", "--model", tmp_path / "m.safetensors")
    assert_one_line_error(code, err, "not a regular file")
