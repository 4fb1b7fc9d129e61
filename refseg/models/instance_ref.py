"""Instance-aware referring segmentation: detect, mask, let the expression pick.

The image side runs once per photo: the COCO-trained SSD-MobileNetV2 (:mod:`refseg.models.detector`)
finds objects of all classes, a class-agnostic mask head gives each box an instance mask (Mask R-CNN
§3, He et al. 2017, on the detector's taps) and a dense stuff head adds one region per stuff class
present ("the sky", "grass"). Each expression is parsed into a subject category, a related object's
category and a count (:mod:`refseg.models.expression`), every candidate is measured by cue features
(:mod:`refseg.models.candidate_cues`) and scored by weights that the expression's words set — the
idea of MAttNet's modular scoring (Yu et al., CVPR 2018, §3), made small. The best candidate is chosen;
"both", "two", "all" and plural subjects choose several, and an expression whose category no candidate
has chooses none. The output is the chosen masks' probability on the canvas, so post-processing,
evaluation, the API and the server treat it like any other model's logits.

Four networks do the tensor work — the detector, the stuff head, the mask head (:class:`ImageNetworks`) and
the scorer (``forward`` on a photo's candidates) — and :meth:`InstanceRef.candidates` is the glue between
them (detection post-processing, duplicates, stuff regions, colour naming), so the ONNX runtime runs the
same glue with the networks swapped for their graphs (:mod:`refseg.export.instance_onnx`).
"""
from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from refseg.labels import IMAGENET_MEAN, IMAGENET_STD, SEGMENTATION_CATEGORIES
from refseg.models import text as T
from refseg.models.base import Batch, ModelOutput, RefSegModel, register
from refseg.models.boxes import nms
from refseg.models.candidate_cues import CUE_GROUPS, CUE_NAMES, Candidates, cue_features
from refseg.models.expression import ExpressionParser, ParsedExpression, label_names
from refseg.models.instance_heads import MaskHead, StuffHead
from refseg.models.layers import probability_to_logit
from refseg.vocabulary import COLOUR_NAMES, colour_shares

#: Label-space index of every stuff class (after the 80 COCO things), and the stuff head's "thing" class.
NUM_THINGS = 80
STUFF_LABELS = tuple(range(NUM_THINGS, len(SEGMENTATION_CATEGORIES)))
THING_CLASS = len(STUFF_LABELS)
#: Detections of different classes overlapping more than this are one object (the better one is kept).
DUPLICATE_IOU = 0.7
#: Taps (strides) the mask head and the stuff head read.
MASK_STRIDES = (4, 8, 16)
STUFF_STRIDES = (8, 16, 32)
_TAP_STRIDES = (4, 8, 16, 32)
#: The extras the scorer computes per expression; the others describe the candidates (:func:`candidate_extras`).
SCORER_EXTRAS = ("candidate_scores", "candidate_chosen", "confidence")


class ImageNetworks(Protocol):
    """The image side's networks as :meth:`InstanceRef.candidates` calls them: the model's own modules
    (the model itself), or their ONNX graphs (:mod:`refseg.runtime.onnx_networks`)."""

    def detector_outputs(self, rgb: Tensor) -> tuple[list[Tensor], Tensor, Tensor]:
        """Canvas pixels [B, 3, S, S] (0..255) → detector taps (strides 4, 8, 16, 32), SSD box encodings
        [B, A, 4] and class logits [B, A, 91]."""

    def stuff_probabilities(self, taps: list[Tensor]) -> Tensor:
        """Taps at :data:`STUFF_STRIDES` → stuff class probabilities [B, n_stuff + 1, S/8, S/8]."""

    def instance_masks(self, taps: list[Tensor], boxes: Tensor, size: int, grid: int) -> Tensor:
        """Taps at :data:`MASK_STRIDES` of one photo + boxes [K, 4] → masks [K, grid, grid] on the canvas."""


@register("instance_ref")
class InstanceRef(RefSegModel):
    """Detector candidates + instance masks + stuff regions, scored by expression-weighted cues."""

    def __init__(
        self,
        max_things: int = 20,
        max_stuff: int = 6,
        min_score: float = 0.15,
        min_stuff_area: float = 0.01,
        mask_width: int = 64,
        stuff_width: int = 64,
        cue_hidden: int = 64,
        cues: tuple[str, ...] | list[str] = tuple(CUE_GROUPS),
        none_below: float = 0.05,
        set_margin: float = 2.0,
        max_len: int = T.DEFAULT_MAX_LEN,
    ) -> None:
        cues = list(cues)
        super().__init__(
            max_things=max_things, max_stuff=max_stuff, min_score=min_score, min_stuff_area=min_stuff_area,
            mask_width=mask_width, stuff_width=stuff_width, cue_hidden=cue_hidden, cues=cues,
            none_below=none_below, set_margin=set_margin, max_len=max_len,
        )
        from refseg.errors import ConfigError
        from refseg.models.detector import load_detector

        unknown = sorted(set(cues) - set(CUE_GROUPS))
        if unknown:
            raise ConfigError(f"unknown cue group {unknown[0]!r}; choose from {', '.join(CUE_GROUPS)}")
        self.detector = load_detector().eval().requires_grad_(False)
        with torch.no_grad():
            channels = {s: t.shape[1] for s, t in zip(_TAP_STRIDES, self.detector.features(torch.zeros(1, 3, 64, 64)))}
        self.mask_head = MaskHead([channels[s] for s in MASK_STRIDES], MASK_STRIDES, width=mask_width)
        self.stuff_head = StuffHead([channels[s] for s in STUFF_STRIDES], len(STUFF_LABELS) + 1, width=stuff_width)
        self.parser = ExpressionParser()
        enabled = {name for group in cues for name in CUE_GROUPS[group]}
        self.register_buffer("cue_mask", torch.tensor([name in enabled for name in CUE_NAMES]).float(), persistent=False)
        self.cue_base = nn.Parameter(torch.zeros(len(CUE_NAMES)))
        self.word_cues = nn.Sequential(nn.Linear(T.GLOVE_DIM, cue_hidden), nn.ReLU(), nn.Linear(cue_hidden, len(CUE_NAMES)))
        self.reset_scorer()

    def reset_scorer(self) -> None:
        """Untrained scorer weights: the category cue alone; words add nothing yet."""
        with torch.no_grad():
            self.cue_base.copy_(torch.tensor([1.0 if n == "category" else 0.0 for n in CUE_NAMES]))
        self.word_cues[0].reset_parameters()
        nn.init.zeros_(self.word_cues[-1].weight)
        nn.init.zeros_(self.word_cues[-1].bias)

    # ------------------------------------------------------------------------------------ text side
    def tokenize(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        index = T.glove_index()
        return T.encode(texts, lambda w: index[w] + 2 if w in index else T.UNK_ID, self.config["max_len"])

    # ----------------------------------------------------------------------------------- image side
    @property
    def backbone_frozen(self) -> bool:
        return True

    def checkpoint_exclude(self) -> list[str]:
        return ["detector."]

    def taps(self, images: Tensor) -> list[Tensor]:
        """The detector's MobileNetV2 taps (strides 4, 8, 16, 32) of ImageNet-normalised canvases."""
        return self._taps_of_pixels(canvas_rgb(images))

    def _taps_of_pixels(self, rgb: Tensor) -> list[Tensor]:
        return self.detector.features(rgb * (2.0 / 255.0) - 1.0)

    def label_names(self) -> tuple[str, ...]:
        return label_names()

    def encode_image(self, images: Tensor) -> list[Tensor]:
        """Canvases [B, 3, S, S] → the candidates of each photo, packed (see :class:`Candidates`)."""
        return self.candidates(images).to_list()

    def candidates(
        self, images: Tensor, taps: list[Tensor] | None = None, networks: ImageNetworks | None = None
    ) -> Candidates:
        """The candidates of canvases [B, 3, S, S]; ``taps`` when they are already computed (training).
        The networks are the model's own unless ``networks`` (the ONNX runtime's) is given; the rest
        (detection post-processing, duplicates, stuff regions, colours) is this glue."""
        networks = self if networks is None else networks
        size = images.shape[-1]
        rgb = canvas_rgb(images)
        if taps is None:
            taps, box_encodings, class_logits = networks.detector_outputs(rgb)
        else:
            box_encodings, class_logits = self.detector.head(taps)
        extent = _extent(rgb)
        min_score = self.config["min_score"]
        things = [self.detector.detections(box_encodings[b], class_logits[b], size, (size, size), min_score)
                  for b in range(len(rgb))]
        stuff_probs = networks.stuff_probabilities(at_strides(taps, STUFF_STRIDES))
        grid = size // 2
        per_image = []
        for b, det in enumerate(things):
            # one candidate per object: a box that another class's better box covers is the same object
            keep = nms(det.boxes, det.scores, DUPLICATE_IOU, self.config["max_things"])
            boxes = torch.as_tensor(det.boxes[keep], dtype=images.dtype)
            photo_taps = [t[b : b + 1] for t in at_strides(taps, MASK_STRIDES)]
            thing_masks = networks.instance_masks(photo_taps, boxes, size, grid)
            # the detector also sees the letterbox padding: keep boxes and masks on the photo
            thing_masks = thing_masks * _inside(extent[b], size, grid)
            boxes = torch.minimum(boxes.clamp(min=0), extent[b].repeat(2))
            labels = _thing_labels(torch.as_tensor(det.class_scores[keep], dtype=images.dtype))
            stuff = _stuff_regions(stuff_probs[b], extent[b], size, grid, self.config["min_stuff_area"],
                                   self.config["max_stuff"])
            per_image.append((boxes, labels, torch.as_tensor(det.scores[keep], dtype=images.dtype), thing_masks, stuff))
        k = self.config["max_things"] + self.config["max_stuff"]
        on_photo = torch.stack([_inside(e, size, stuff_probs.shape[-1]) for e in extent])[:, None]
        return _pack(per_image, rgb, extent, k, grid, stuff_probs[:, : len(STUFF_LABELS)] * on_photo)

    # ------------------------------------------------------------------- the image side's networks
    def detector_outputs(self, rgb: Tensor) -> tuple[list[Tensor], Tensor, Tensor]:
        """See :class:`ImageNetworks`."""
        taps = self._taps_of_pixels(rgb)
        return (taps, *self.detector.head(taps))

    def stuff_probabilities(self, taps: list[Tensor]) -> Tensor:
        """See :class:`ImageNetworks`."""
        return self.stuff_head(taps).softmax(1)

    def instance_masks(self, taps: list[Tensor], boxes: Tensor, size: int, grid: int) -> Tensor:
        """Mask-head probabilities of ``boxes`` (canvas pixels), pasted on a ``grid`` × ``grid`` canvas map."""
        if boxes.shape[0] == 0:
            return boxes.new_zeros(0, grid, grid)
        logits = self.mask_head(taps, boxes, torch.zeros_like(boxes[:, 0], dtype=torch.long))
        return paste_masks(logits.sigmoid()[:, 0], boxes, size, grid)

    # ------------------------------------------------------------------------------------- scoring
    def score(self, candidates: Candidates, parsed: ParsedExpression) -> Tensor:
        """Score of every candidate for its expression [B, K] (−inf on padding)."""
        features = cue_features(candidates, parsed) * self.cue_mask
        words = self.word_cues(parsed.words) * parsed.mask[..., None]
        weights = (self.cue_base + words.sum(1)) * self.cue_mask
        scores = (features * weights[:, None, :]).sum(-1)
        return scores.masked_fill(candidates.valid <= 0, float("-inf"))

    def select(self, candidates: Candidates, parsed: ParsedExpression, scores: Tensor) -> Tensor:
        """Which candidates the expression refers to [B, K] float {0, 1}: the best one; the best n for
        "two ..."; every candidate of the category close to the best for "all" / plurals; none when no
        candidate has the named category."""
        match = (candidates.labels * parsed.subject[:, None, :]).sum(-1) * candidates.valid
        best = scores.max(-1, keepdim=True).values
        same_category = match >= 0.5 * match.max(-1, keepdim=True).values
        # rank among the candidates of the named category (0 = its best)
        rank = ((scores[:, None, :] > scores[:, :, None]) & same_category[:, None, :]).sum(-1)
        count = parsed.count[:, None]
        every, one = count == 0, count == 1  # boolean algebra, not torch.where: onnxruntime has no boolean Where
        several = same_category & (scores >= best - self.config["set_margin"])
        counted = same_category & (rank < count)
        chosen = (every & several) | (one & (scores >= best)) | (~every & ~one & counted)
        none = parsed.named & ~_names_stuff(parsed) & (match.max(-1).values < self.config["none_below"])
        return (chosen & ~none[:, None] & (candidates.valid > 0)).float()

    def forward(self, batch: Batch) -> ModelOutput:
        if batch.features is not None:
            candidates = Candidates.from_list(batch.features)
        else:
            candidates = self.candidates(batch.images)
        parsed = self.parser(batch.tokens, batch.lengths)
        scores = self.score(candidates, parsed)
        chosen = self.select(candidates, parsed, scores)
        prob = (candidates.masks * chosen[:, :, None, None]).amax(1, keepdim=True)
        stuff, stuff_peak = _named_stuff(candidates.stuff_map, parsed, prob.shape[-1])
        names_stuff = _names_stuff(parsed)
        prob = torch.where(names_stuff[:, None, None, None], stuff, prob)
        # confidence: the chosen candidates' share of the softmax (stuff: the named class's peak probability)
        share = (scores.softmax(-1).nan_to_num() * chosen).sum(-1)
        confidence = torch.where(names_stuff, stuff_peak, share)
        return ModelOutput(
            logits=probability_to_logit(prob),
            extras={**dict(zip(SCORER_EXTRAS, (scores, chosen, confidence))), **candidate_extras(candidates)},
        )

    def scorer_loss(self, candidates: Candidates, parsed: ParsedExpression, target: Tensor) -> Tensor:
        """Cross-entropy of the candidate scores against the index of the target candidate [B]."""
        return F.cross_entropy(self.score(candidates, parsed).clamp(min=-1e4), target)


# ---------------------------------------------------------------------------------------------- helpers
def candidate_extras(candidates: Candidates) -> dict[str, Tensor]:
    """The extras that describe the candidates themselves (the same for every expression on a photo)."""
    return {"candidate_boxes": candidates.boxes, "candidate_labels": candidates.labels.argmax(-1),
            "candidate_valid": candidates.valid, "candidate_masks": candidates.masks}


def at_strides(taps: list[Tensor], strides: tuple[int, ...]) -> list[Tensor]:
    """The taps at ``strides`` (of the four at 4, 8, 16, 32)."""
    return [taps[_TAP_STRIDES.index(s)] for s in strides]


def _names_stuff(parsed: ParsedExpression) -> Tensor:
    """[B] bool: the subject is a stuff class ("sky", "the grass on the left")."""
    return parsed.subject[:, NUM_THINGS:].sum(-1) >= 0.5


def _named_stuff(stuff_map: Tensor, parsed: ParsedExpression, grid: int) -> Tensor:
    """The stuff head's probability of the named stuff classes relative to its peak on the photo (a region
    is where it reaches half its peak), on the ``grid`` [B, 1, grid, grid], and that peak [B]."""
    named = torch.einsum("bchw,bc->bhw", stuff_map, parsed.subject[:, NUM_THINGS:])[:, None]
    peak = named.amax((-1, -2), keepdim=True)
    relative = F.interpolate(named / peak.clamp(min=1e-6), size=(grid, grid), mode="bilinear", align_corners=False)
    return relative, peak.flatten()


def paste_masks(probs: Tensor, boxes: Tensor, size: int, grid: int) -> Tensor:
    """Box-relative masks [K, m, m] → [K, grid, grid] on the canvas (zero outside each box)."""
    centres = (torch.arange(grid, dtype=probs.dtype) + 0.5) * (size / grid)
    x1, y1, x2, y2 = boxes.unbind(-1)
    gx = 2 * (centres[None] - x1[:, None]) / (x2 - x1).clamp(min=1e-3)[:, None] - 1
    gy = 2 * (centres[None] - y1[:, None]) / (y2 - y1).clamp(min=1e-3)[:, None] - 1
    field = torch.stack([gx[:, None, :].expand(-1, grid, -1), gy[:, :, None].expand(-1, -1, grid)], -1)
    return F.grid_sample(probs[:, None], field, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]


def canvas_rgb(images: Tensor) -> Tensor:
    """ImageNet-normalised canvases → their 0..255 pixel values (the letterbox made them from uint8)."""
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((images * std + mean) * 255).round().clamp(0, 255)


def _extent(rgb: Tensor) -> Tensor:
    """Width and height of the photo on each canvas [B, 2]: the letterbox pads right and bottom with black."""
    lit = rgb.amax(1) > 0  # [B, S, S]
    positions = torch.arange(1, rgb.shape[-1] + 1, dtype=rgb.dtype)
    width = (lit.any(1).to(rgb.dtype) * positions).amax(-1)
    height = (lit.any(2).to(rgb.dtype) * positions).amax(-1)
    return torch.stack([width, height], -1).clamp(min=1)


def _inside(extent: Tensor, size: int, grid: int) -> Tensor:
    """[grid, grid] 1 on the photo's part of the canvas, 0 on the padding."""
    centres = (torch.arange(grid, dtype=extent.dtype) + 0.5) * (size / grid)
    return ((centres[None, :] < extent[0]) & (centres[:, None] < extent[1])).to(extent.dtype)


def _thing_labels(class_scores: Tensor) -> Tensor:
    """Detector class scores [N, 91] (COCO ids) → label distribution [N, L] over the 80 things."""
    from refseg.labels import COCO_PANOPTIC

    ids = torch.tensor([category_id for category_id, _ in COCO_PANOPTIC[:NUM_THINGS]])
    things = class_scores[:, ids]
    labels = class_scores.new_zeros(class_scores.shape[0], len(SEGMENTATION_CATEGORIES))
    labels[:, :NUM_THINGS] = things / things.sum(-1, keepdim=True).clamp(min=1e-6)
    return labels


def _stuff_regions(probs: Tensor, extent: Tensor, size: int, grid: int, min_area: float, limit: int):
    """The stuff classes that win at least ``min_area`` of the photo → (boxes, labels, confidence, masks)."""
    h, w = probs.shape[-2:]
    stride = size / w
    inside = torch.zeros(h, w, dtype=torch.bool)
    inside[: int(np.ceil(float(extent[1]) / stride)), : int(np.ceil(float(extent[0]) / stride))] = True
    winner = probs.argmax(0)
    areas = torch.stack([((winner == c) & inside).float().mean() for c in range(len(STUFF_LABELS))])
    areas = areas / inside.float().mean().clamp(min=1e-6)
    order = [int(c) for c in areas.argsort(descending=True)[:limit] if areas[c] >= min_area]
    boxes, labels, confidence, masks = [], [], [], []
    for c in order:
        region = (winner == c) & inside
        ys, xs = torch.nonzero(region, as_tuple=True)
        boxes.append(torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).to(probs.dtype) * stride)
        label = probs.new_zeros(len(SEGMENTATION_CATEGORIES))
        label[STUFF_LABELS[c]] = 1.0
        labels.append(label)
        confidence.append(probs[c][region].mean())
        masks.append(probs[c] * inside)
    if not order:
        return probs.new_zeros(0, 4), probs.new_zeros(0, len(SEGMENTATION_CATEGORIES)), probs.new_zeros(0), probs.new_zeros(0, grid, grid)
    soft = F.interpolate(torch.stack(masks)[:, None], size=(grid, grid), mode="bilinear", align_corners=False)[:, 0]
    return torch.stack(boxes), torch.stack(labels), torch.stack(confidence), soft


def _colours(rgb: Tensor, masks: Tensor) -> Tensor:
    """Share of each colour name on each candidate's pixels (mask ≥ 0.5) [K, n_colours]."""
    pixels = rgb.permute(1, 2, 0).numpy().astype(np.uint8)
    grid = masks.shape[-1]
    small = F.interpolate(rgb[None], size=(grid, grid), mode="area")[0].permute(1, 2, 0).numpy().astype(np.uint8) \
        if pixels.shape[0] != grid else pixels
    out = torch.zeros(masks.shape[0], len(COLOUR_NAMES))
    for k, mask in enumerate(masks.numpy() >= 0.5):
        shares = colour_shares(small[mask]) if mask.any() else {}
        out[k] = torch.tensor([shares.get(name, 0.0) for name in COLOUR_NAMES])
    return out


def _pack(per_image: list, rgb: Tensor, extent: Tensor, k: int, grid: int, stuff_map: Tensor) -> Candidates:
    """Per-photo (things, stuff) tensors → one padded :class:`Candidates` batch."""
    b, n_labels = len(per_image), len(SEGMENTATION_CATEGORIES)
    out = Candidates(
        boxes=torch.zeros(b, k, 4), labels=torch.zeros(b, k, n_labels), confidence=torch.zeros(b, k),
        stuff=torch.zeros(b, k), colours=torch.zeros(b, k, len(COLOUR_NAMES)), valid=torch.zeros(b, k),
        extent=extent.float(), masks=torch.zeros(b, k, grid, grid), stuff_map=stuff_map,
    )
    for i, (boxes, labels, scores, masks, stuff) in enumerate(per_image):
        s_boxes, s_labels, s_conf, s_masks = stuff
        all_masks = torch.cat([masks, s_masks])
        n = min(k, all_masks.shape[0])
        out.boxes[i, :n] = torch.cat([boxes, s_boxes])[:n]
        out.labels[i, :n] = torch.cat([labels, s_labels])[:n]
        out.confidence[i, :n] = torch.cat([scores, s_conf])[:n]
        out.stuff[i, len(boxes) : n] = 1.0
        out.masks[i, :n] = all_masks[:n]
        out.colours[i, :n] = _colours(rgb[i], all_masks[:n])
        out.valid[i, :n] = 1.0
    return out
