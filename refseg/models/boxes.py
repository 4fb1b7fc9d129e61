"""SSD box machinery: grid anchors, box decoding, per-class non-maximum suppression, :class:`Detections`.

Anchors follow SSD (Liu et al., 2016, §2.2 "Choosing scales and aspect ratios"): feature map k of
m gets scale s_k = s_min + (s_max - s_min)(k - 1)/(m - 1), one box per aspect ratio a of size
(s_k/√a, s_k√a) (height, width) and one extra square box of scale √(s_k s_{k+1}); the lowest map
gets only three boxes (TF Object Detection API ``reduce_boxes_in_lowest_layer``). Centres sit at
((i + ½)/H, (j + ½)/W), so the anchors follow whatever feature-map sizes the input gives.
Everything here is in normalised [0, 1] image coordinates, (ymin, xmin, ymax, xmax) as TensorFlow.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from refseg.labels import COCO_THING_CATEGORIES

#: ssd_mobilenet_v2_coco's anchor generator (its graph holds these constants).
MIN_SCALE, MAX_SCALE = 0.2, 0.95
ASPECT_RATIOS = (1.0, 2.0, 0.5, 3.0, 0.3333)
LOWEST_LAYER = ((0.1, 1.0), (0.2, 2.0), (0.2, 0.5))  # (scale, aspect ratio)

#: COCO detection label map: index = category id (0 background, 1..90; ids COCO never annotated: "unused").
COCO_DETECTION_NAMES: tuple[str, ...] = tuple(
    {0: "background", **dict(COCO_THING_CATEGORIES)}.get(i, "unused") for i in range(91)
)


@dataclass
class Detections:
    """Detections of one photo, highest score first, in the photo's pixels."""

    boxes: np.ndarray  # float32 [N, 4] x1, y1, x2, y2
    labels: np.ndarray  # int64 [N] COCO category ids (1..90)
    scores: np.ndarray  # float32 [N]
    class_scores: np.ndarray  # float32 [N, 91] sigmoid score of every class for the kept box (column 0: background)
    names: list[str]  # COCO class name of each detection

    def __len__(self) -> int:
        return len(self.labels)


def layer_boxes(num_layers: int) -> list[list[tuple[float, float]]]:
    """(height, width) of the anchors at each location of each of ``num_layers`` maps."""
    scales = [MIN_SCALE + (MAX_SCALE - MIN_SCALE) * k / (num_layers - 1) for k in range(num_layers)] + [1.0]
    layers = []
    for k in range(num_layers):
        pairs = LOWEST_LAYER if k == 0 else [(scales[k], a) for a in ASPECT_RATIOS]
        sizes = [(s / np.sqrt(np.float32(a)), s * np.sqrt(np.float32(a))) for s, a in pairs]
        if k > 0:
            interpolated = float(np.sqrt(scales[k] * scales[k + 1]))
            sizes.append((interpolated, interpolated))
        layers.append(sizes)
    return layers


def grid_anchors(grid_sizes: Sequence[tuple[int, int]], scale: float = 1.0) -> Tensor:
    """Anchors [A, 4] as (y_centre, x_centre, height, width), ordered map, row, column, box.

    ``scale`` multiplies every box size (centres stay on the grid).
    """
    per_layer = []
    for (h, w), sizes in zip(grid_sizes, layer_boxes(len(grid_sizes))):
        ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w
        yc, xc = torch.meshgrid(ys, xs, indexing="ij")
        hw = torch.tensor(sizes, dtype=torch.float32) * scale  # [K, 2]
        centres = torch.stack([yc, xc], dim=-1)[:, :, None, :].expand(h, w, len(sizes), 2)
        per_layer.append(torch.cat([centres, hw.expand(h, w, -1, -1)], dim=-1).reshape(-1, 4))
    return torch.cat(per_layer)


def decode(encodings: Tensor, anchors: Tensor, scales: Sequence[float]) -> Tensor:
    """Faster R-CNN box coder (SSD eq. 2): (ty, tx, th, tw) / scales → (ymin, xmin, ymax, xmax)."""
    ty, tx, th, tw = (encodings / encodings.new_tensor(scales)).unbind(-1)
    ya, xa, ha, wa = anchors.unbind(-1)
    yc, xc = ty * ha + ya, tx * wa + xa
    h, w = torch.exp(th) * ha, torch.exp(tw) * wa
    return torch.stack([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], dim=-1)


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    ymin, xmin = np.maximum(box[0], others[:, 0]), np.maximum(box[1], others[:, 1])
    ymax, xmax = np.minimum(box[2], others[:, 2]), np.minimum(box[3], others[:, 3])
    inter = np.clip(ymax - ymin, 0, None) * np.clip(xmax - xmin, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_keep: int) -> np.ndarray:
    """Greedy NMS: indices of kept boxes, best first; a box goes when its IoU with a kept one exceeds the threshold."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size and len(keep) < max_keep:
        best, order = order[0], order[1:]
        keep.append(int(best))
        order = order[_iou(boxes[best], boxes[order]) <= iou_threshold]
    return np.array(keep, dtype=np.int64)


def multiclass_nms(
    boxes: np.ndarray, scores: np.ndarray, score_threshold: float, iou_threshold: float, max_per_class: int, max_total: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TF Object Detection API post-processing of one image.

    Per class (background excluded): keep scores above the threshold, clip boxes to the image and
    drop those left without area, NMS; then the best ``max_total`` over all classes.
    Returns (anchor index, class id, clipped box) of each detection, best first.
    """
    clipped = np.clip(boxes, 0.0, 1.0)
    has_area = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    anchors, classes = [], []
    for c in range(1, scores.shape[1]):
        candidates = np.flatnonzero((scores[:, c] > score_threshold) & has_area)
        if candidates.size:
            kept = candidates[nms(clipped[candidates], scores[candidates, c], iou_threshold, max_per_class)]
            anchors.append(kept)
            classes.append(np.full(kept.size, c, dtype=np.int64))
    if not anchors:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 4), np.float32)
    anchor, label = np.concatenate(anchors), np.concatenate(classes)
    best = np.argsort(-scores[anchor, label], kind="stable")[:max_total]
    return anchor[best], label[best], clipped[anchor[best]]
