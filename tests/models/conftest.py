"""Fixtures shared by the model tests."""
from __future__ import annotations

import pytest
import torch

from refseg.data.shapes import generate_samples


@pytest.fixture(autouse=True)
def single_thread():
    """Small models step faster on one thread (and the two CPU cores may be shared and busy)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def vocab() -> list[str]:
    """A word list built from short ShapeRef attribute expressions."""
    from refseg.models.text import Vocab

    pool = generate_samples(32, seed=0, size=96, kinds=["attribute"], per_scene=2)
    return Vocab.build(s.sentence for s in pool).to_list()
