"""DenseCRF refinement snaps a blurred, shifted mask to the edges of a synthetic object."""
from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image, ImageFilter

from refseg.errors import MissingExtraError
from refseg.postprocess import crf


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def _boundary_error(prob: np.ndarray, target: np.ndarray) -> float:
    """Mean |prob - target| in a band around the object's border."""
    im = Image.fromarray(target.astype(np.uint8) * 255)
    grown = np.asarray(im.filter(ImageFilter.MaxFilter(11))) > 127
    shrunk = np.asarray(im.filter(ImageFilter.MinFilter(11))) > 127
    band = grown & ~shrunk
    return float(np.abs(prob - target)[band].mean())


@pytest.fixture()
def scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A red ellipse on a noisy blue background, and a blurred, shifted, softened guess of its mask."""
    pytest.importorskip("pydensecrf.densecrf")
    rng = np.random.default_rng(0)
    h, w = 120, 160
    yy, xx = np.mgrid[:h, :w]
    target = ((yy - 60) / 35) ** 2 + ((xx - 75) / 50) ** 2 < 1
    rgb = np.where(target[..., None], [200, 60, 40], [40, 90, 170]) + rng.normal(0, 12, (h, w, 3))
    rgb = np.clip(rgb, 0, 255).astype(np.uint8)
    blurred = Image.fromarray(target.astype(np.uint8) * 255).filter(ImageFilter.GaussianBlur(8))
    prob = np.roll(np.asarray(blurred, np.float32) / 255, 4, axis=1) * 0.9 + 0.05
    return rgb, prob, target


def test_refine_sharpens_along_image_edges(scene) -> None:
    rgb, prob, target = scene
    refined = crf.refine(prob, rgb)
    assert refined.shape == prob.shape and refined.dtype == np.float32
    assert refined.min() >= 0 and refined.max() <= 1
    assert _iou(refined >= 0.5, target) > _iou(prob >= 0.5, target) + 0.05
    assert _boundary_error(refined, target) < 0.5 * _boundary_error(prob, target)


def test_refine_follows_the_photo_not_the_guess(scene) -> None:
    rgb, prob, target = scene
    moved = np.roll(rgb, 10, axis=1)  # the object moves in the photo, the guess does not
    refined = crf.refine(prob, moved) >= 0.5
    assert _iou(refined, np.roll(target, 10, axis=1)) > _iou(refined, target)


def test_read_only_inputs_are_accepted(scene) -> None:
    rgb, prob, target = scene
    rgb.flags.writeable = False  # as decoded by Pillow via np.asarray
    prob.flags.writeable = False
    assert _iou(crf.refine(prob, rgb) >= 0.5, target) > 0.9


def test_shape_mismatch_is_rejected(scene) -> None:
    rgb, prob, _ = scene
    with pytest.raises(ValueError):
        crf.refine(prob[:-1], rgb)


def test_missing_package_gives_a_clear_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    with pytest.raises(MissingExtraError, match="refseg\\[crf\\]"):
        crf.refine(np.zeros((4, 4), np.float32), np.zeros((4, 4, 3), np.uint8))
