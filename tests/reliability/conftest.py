"""Fixtures of the reliability tests: the red-pixel test model (tests.fixtures.red_model) behind the
three user surfaces — the Python API, the ``refseg`` CLI (in process) and the HTTP server."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.cli import run_refseg
from tests.fixtures.red_model import save_red_model

IMAGE_SIZE = 64


@pytest.fixture(scope="session")
def red_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint of the red-pixel model (mask = the red pixels of the photo)."""
    return save_red_model(tmp_path_factory.mktemp("red_model"), max_words=6, image_size=IMAGE_SIZE)


@pytest.fixture(scope="session")
def segmenter(red_checkpoint: Path):
    from refseg.api import Segmenter

    return Segmenter.from_pretrained(red_checkpoint)


@pytest.fixture(scope="session")
def client(segmenter):
    """The HTTP app with its default limits around the red-pixel segmenter."""
    from fastapi.testclient import TestClient

    from refseg.serve.app import create_app

    with TestClient(create_app(segmenter)) as test_client:
        yield test_client


@pytest.fixture()
def cli(capsys):
    """Run ``refseg ARGS`` in process; returns (exit code, stdout, stderr)."""
    return lambda *args: run_refseg(capsys, *args)
