"""Visualisations: sizes, where the tint goes, colour map direction, strip and chart layout."""
from __future__ import annotations

import numpy as np
import pytest

from refseg import viz


@pytest.fixture()
def photo() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(57, 83, 3), dtype=np.uint8)


def _disc(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r**2


def test_overlay_tints_only_inside_the_masks(photo: np.ndarray) -> None:
    a, b = _disc(57, 83, 30, 20, 10), _disc(57, 83, 30, 60, 12)
    out = viz.overlay(photo, [a, b], outline=0)
    assert out.shape == photo.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[~(a | b)], photo[~(a | b)])
    assert not np.array_equal(out[a], photo[a])
    mean_a, mean_b = out[a].astype(float).mean(0), out[b].astype(float).mean(0)
    assert np.abs(mean_a - mean_b).max() > 20  # two masks, two colours


def test_overlay_outline_uses_the_mask_colour(photo: np.ndarray) -> None:
    mask = _disc(57, 83, 28, 40, 15)
    out = viz.overlay(photo, mask, outline=2)
    edge = mask & ~_disc(57, 83, 28, 40, 13)  # within 2 px of the border
    assert (out[edge] == np.array(viz.PALETTE[0], np.uint8)).all(axis=1).mean() > 0.9


def test_overlay_legend_draws_in_the_corner_only(photo: np.ndarray) -> None:
    mask = np.zeros(photo.shape[:2], bool)
    out = viz.overlay(photo, [mask, mask], labels=["the cat", "the dog"])
    assert not np.array_equal(out[:20, :40], photo[:20, :40])
    np.testing.assert_array_equal(out[40:, 60:], photo[40:, 60:])


def test_long_legend_labels_wrap_inside_the_photo() -> None:
    photo = np.zeros((200, 160, 3), np.uint8)
    label = "the man in the black jacket standing on the left next to the parked motorbike"
    out = viz.overlay(photo, np.zeros((200, 160), bool), labels=[label])
    drawn_rows = np.flatnonzero(out.any(axis=(1, 2)))
    assert drawn_rows.max() > 3 * 10  # several lines of text, not one cut at the right edge
    rows = viz._wrap(label, len, 20)
    assert " ".join(rows) == label and all(len(r) <= 20 for r in rows)


def test_overlay_rejects_masks_of_another_size(photo: np.ndarray) -> None:
    with pytest.raises(ValueError):
        viz.overlay(photo, np.zeros((10, 10), bool))


def test_colorize_runs_from_blue_to_red() -> None:
    rgb = viz.colorize(np.array([[0.0, 0.5, 1.0]]))
    low, high = rgb[0, 0].astype(int), rgb[0, 2].astype(int)
    assert low[2] > low[0] and high[0] > high[2]
    assert rgb.shape == (1, 3, 3) and rgb.dtype == np.uint8


def test_heatmap_has_photo_size_and_depends_on_probability(photo: np.ndarray) -> None:
    zero, one = viz.heatmap(photo, np.zeros((57, 83))), viz.heatmap(photo, np.ones((57, 83)))
    assert zero.shape == one.shape == photo.shape
    assert one[..., 0].mean() > zero[..., 0].mean()


def test_word_strip_has_one_tile_per_word_plus_image_and_mask(photo: np.ndarray) -> None:
    maps = np.stack([_disc(57, 83, 28, 40, r).astype(np.float32) for r in (5, 10, 15)])
    words = ["the", "big", "ball"]
    tile_h = 60
    tile_w = round(83 * tile_h / 57)
    plain = viz.word_strip(photo, maps, words, tile_height=tile_h)
    with_mask = viz.word_strip(photo, maps, words, mask=maps[-1] > 0.5, tile_height=tile_h)
    assert plain.shape[0] > tile_h  # caption row below the tiles
    assert plain.shape[1] == 4 * tile_w + 3 * 4
    assert with_mask.shape[1] == 5 * tile_w + 4 * 4
    with pytest.raises(ValueError):
        viz.word_strip(photo, maps[0], words)


def test_attention_chart_grows_with_steps_and_words() -> None:
    weights = np.full((4, 5), 0.2)
    small = viz.attention_chart(weights[:2, :3], ["a", "b", "c"], cell=30)
    large = viz.attention_chart(weights, ["the", "man", "on", "the", "left"], cell=30)
    assert large.shape[0] - small.shape[0] >= 2 * 30
    assert large.shape[1] - small.shape[1] == 2 * 30
    assert large.dtype == np.uint8 and large.shape[2] == 3
    strong = viz.attention_chart(np.array([[1.0, 0.0]]), ["x", "y"], cell=30)
    assert not np.array_equal(strong[5:25, -25:-5], strong[5:25, -55:-35])  # cells coloured by weight
