"""Candidate regions of one photo and the cue features an expression scores them by.

:class:`Candidates` is the image side of the instance-aware model, computed once per photo:
boxes, label distributions, confidences, soft masks on the canvas, colour shares and the image
extent. :func:`cue_features` measures each candidate against one parsed expression
(location absolute and relative to the other candidates of the named category, ordinal position,
size, the share of the colours it names and how that stands out among the peers, relation to a
candidate of the object category), in the spirit of MAttNet's subject,
location and relationship modules (Yu et al., CVPR 2018, §3).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

from refseg.models.expression import ParsedExpression

#: Names of the cue features, in :func:`cue_features` order (also the columns of the model card's ablation).
CUE_NAMES: tuple[str, ...] = (
    "category", "x", "y", "width", "height", "size", "left_rank", "top_rank", "size_rank", "near_rank",
    "middle", "first_left", "second_left", "third_left", "first_right", "second_right", "third_right",
    "peers", "confidence", "stuff", "colour_match", "colour_contrast",
    "related", "rel_overlap", "rel_near", "rel_above", "rel_below", "rel_left", "rel_right",
)
#: Cue groups whose contribution the model card measures (features switched off together).
CUE_GROUPS: dict[str, tuple[str, ...]] = {
    "category": ("category",),
    "location": ("x", "y", "left_rank", "top_rank", "near_rank", "middle", "first_left", "second_left",
                 "third_left", "first_right", "second_right", "third_right"),
    "size": ("width", "height", "size", "size_rank"),
    "colour": ("colour_match", "colour_contrast"),
    "relation": ("related", "rel_overlap", "rel_near", "rel_above", "rel_below", "rel_left", "rel_right"),
    "confidence": ("confidence", "peers", "stuff"),
}
_EPS = 1e-6


@dataclass
class Candidates:
    """K candidate regions per photo (padded; ``valid`` marks real ones). Boxes in canvas pixels."""

    boxes: Tensor  # [B, K, 4] x1, y1, x2, y2
    labels: Tensor  # [B, K, L] label distribution
    confidence: Tensor  # [B, K] detector score or stuff probability
    stuff: Tensor  # [B, K] 1 for stuff regions
    colours: Tensor  # [B, K, 11] share of each basic colour name (vocabulary.COLOUR_NAMES) on its pixels
    valid: Tensor  # [B, K] 1 for real candidates
    extent: Tensor  # [B, 2] width, height of the photo on the canvas
    masks: Tensor  # [B, K, h, w] soft masks on the canvas grid
    stuff_map: Tensor  # [B, n_stuff, h', w'] the stuff head's probability of each stuff class (0 off the photo)

    def to_list(self) -> list[Tensor]:
        return [getattr(self, f.name) for f in fields(self)]

    @classmethod
    def from_list(cls, tensors: list[Tensor]) -> "Candidates":
        return cls(*tensors)


def _soft_count(values: Tensor, target: float) -> Tensor:
    """≈1 where a (soft) count equals ``target``, falling to 0 one unit away."""
    return torch.exp(-4.0 * (values - target) ** 2)


def cue_features(c: Candidates, e: ParsedExpression) -> Tensor:
    """Cue features [B, K, len(CUE_NAMES)] of every candidate for its expression."""
    valid = c.valid
    match = (c.labels * e.subject[:, None, :]).sum(-1)  # [B, K] does the candidate have the named category?
    peer = match * valid
    wh = c.extent[:, None, :].clamp(min=1.0)
    x1, y1, x2, y2 = (c.boxes / wh.repeat(1, 1, 2)).unbind(-1)
    cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1).clamp(min=0), (y2 - y1).clamp(min=0)
    size = (w * h).clamp(min=0).sqrt()

    def peers_where(before: Tensor) -> Tensor:  # weighted number of peers o with before[b, k, o]
        return (before.float() * peer[:, None, :]).sum(-1)

    others = (peer.sum(-1, keepdim=True) - peer).clamp(min=_EPS)
    n_left = peers_where(cx[:, None, :] < cx[:, :, None])
    n_right = peers_where(cx[:, None, :] > cx[:, :, None])
    left_rank = n_left / others
    top_rank = peers_where(cy[:, None, :] < cy[:, :, None]) / others
    size_rank = peers_where(size[:, None, :] < size[:, :, None]) / others
    near_rank = peers_where(y2[:, None, :] < y2[:, :, None]) / others
    colour = (c.colours * e.colours[:, None, :]).sum(-1)  # share of the named colours on the candidate
    peer_colour = ((colour * peer).sum(-1, keepdim=True) - colour * peer) / others
    related = _relations(c, e, cx, cy, w, h)
    features = [
        torch.log(match + 1e-3), cx, cy, w, h, size, left_rank, top_rank, size_rank, near_rank,
        (left_rank - 0.5).abs(),
        _soft_count(n_left, 0), _soft_count(n_left, 1), _soft_count(n_left, 2),
        _soft_count(n_right, 0), _soft_count(n_right, 1), _soft_count(n_right, 2),
        torch.log1p(others.expand_as(match)), c.confidence, c.stuff, colour, colour - peer_colour, *related,
    ]
    return torch.stack(features, -1) * valid[..., None]


def _relations(c: Candidates, e: ParsedExpression, cx: Tensor, cy: Tensor, w: Tensor, h: Tensor) -> list[Tensor]:
    """Best relation of each candidate to a candidate of the object category: overlap, nearness and
    which side the object is on ("on the table", "next to the bus", "under the tree")."""
    obj = (c.labels * e.object[:, None, :]).sum(-1) * c.valid  # [B, K]
    has_object = (e.object.sum(-1) > 0).float()[:, None].expand_as(obj)
    index = torch.arange(obj.shape[1], device=obj.device)
    eye = index[:, None] == index[None, :]  # (not torch.eye: onnxruntime has no boolean EyeLike)
    weight = obj[:, None, :].masked_fill(eye, 0.0)  # [B, K(candidate), K(object)]
    dx = cx[:, None, :] - cx[:, :, None]  # object minus candidate
    dy = cy[:, None, :] - cy[:, :, None]
    scale = ((w + h)[:, :, None] + (w + h)[:, None, :]).clamp(min=_EPS) / 2
    near = torch.exp(-(dx**2 + dy**2).sqrt() / scale)
    right, left, bottom, top = cx + w / 2, cx - w / 2, cy + h / 2, cy - h / 2

    def common(high: Tensor, low: Tensor) -> Tensor:  # length of the shared extent of candidate and object
        return (torch.minimum(high[:, :, None], high[:, None, :]) - torch.maximum(low[:, :, None], low[:, None, :])).clamp(min=0)

    overlap_x, overlap_y = common(right, left), common(bottom, top)
    overlap = overlap_x * overlap_y / (w * h).clamp(min=_EPS)[:, :, None]

    def best(values: Tensor) -> Tensor:
        return (weight * values).max(-1).values

    return [has_object * obj.max(-1, keepdim=True).values, best(overlap), best(near),
            best(near * (dy > 0).float()), best(near * (dy < 0).float()),
            best(near * (dx > 0).float()), best(near * (dx < 0).float())]
