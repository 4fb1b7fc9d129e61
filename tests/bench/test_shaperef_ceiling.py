"""python -m bench.shaperef_ceiling: the IoU a mask keeps when seen through a coarse output grid."""
from __future__ import annotations

import numpy as np
import pytest

from bench.shaperef_ceiling import ceiling_iou


def test_a_mask_made_of_whole_cells_survives_the_grid_but_for_rounded_corners():
    mask = np.zeros((64, 64), dtype=bool)
    mask[16:32, 8:40] = True
    assert 0.9 < ceiling_iou(mask, 8) < 1.0
    assert ceiling_iou(mask, 1) == pytest.approx(1.0)


def test_a_shape_smaller_than_a_cell_is_lost_and_finer_grids_keep_more():
    dot = np.zeros((64, 64), dtype=bool)
    dot[10:13, 10:13] = True
    assert ceiling_iou(dot, 8) == 0.0
    yy, xx = np.mgrid[:64, :64]
    disc = (yy - 30.5) ** 2 + (xx - 27.5) ** 2 <= 9**2
    assert ceiling_iou(disc, 16) < ceiling_iou(disc, 8) < ceiling_iou(disc, 4) <= 1.0


def test_no_target_is_always_right():
    assert ceiling_iou(None, 8) == 1.0
