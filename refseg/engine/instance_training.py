"""Training of the instance-aware model (:mod:`refseg.models.instance_ref`) in three stages.

The detector is frozen, so each training photo (and its mirror image, with mirrored expressions) goes
through it once per stage that needs it:

1. ``masks``: the class-agnostic mask head on jittered ground-truth boxes of every thing region;
2. ``stuff``: the dense stuff head on the stuff / thing / unlabelled map of each photo;
3. ``scorer``: the expression-weighted cue scorer, a softmax over each photo's candidates, the target
   being the candidate whose mask best overlaps the expression's target (IoU ≥ 0.5; expressions
   without such a candidate, sets and no-target ones are left out of this stage).

``refseg train configs/instance_ref.yaml`` runs all three (``train.stages`` sets their step counts).
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from refseg.data.augment import mirror_text
from refseg.data.dataset import image_key
from refseg.data.masks import decode_mask
from refseg.data.sample import RefSample
from refseg.data.transforms import Letterbox, to_tensor
from refseg.models.candidate_cues import Candidates
from refseg.models.instance_heads import MASK_SIZE, roi_align
from refseg.models.instance_ref import MASK_STRIDES, NUM_THINGS, STUFF_STRIDES, THING_CLASS, InstanceRef

STAGES = {"masks": 1500, "stuff": 800, "scorer": 1500}
_MIN_TARGET_IOU = 0.5


@dataclass
class PhotoView:
    """One training photo (or its mirror image) on the canvas, with what each stage needs."""

    key: str
    canvas: Tensor  # [1, 3, S, S] normalised
    taps: list[Tensor] = field(default_factory=list)  # float16 taps at strides 4, 8, 16, 32
    boxes: Tensor | None = None  # [N, 4] thing boxes on the canvas
    instance_masks: Tensor | None = None  # [N, S/2, S/2] float16
    stuff_labels: Tensor | None = None  # [S/8, S/8] long: stuff index, THING_CLASS, -1 unlabelled
    expressions: list[tuple[str, Tensor]] = field(default_factory=list)  # (text, target [S/2, S/2] bool)


def fit(model: InstanceRef, samples: list[RefSample], size: int, stages: dict[str, int], lr: float = 1e-3,
        seed: int = 0, log: Any = print) -> dict[str, float]:
    """Train ``model``'s heads and scorer on ``samples`` (grouped by photo); returns the last losses."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    steps = {**STAGES, **stages}
    views = photo_views(model, samples, size, log)
    losses = {
        "masks": _train_masks(model, views, steps["masks"], lr, rng, log),
        "stuff": _train_stuff(model, views, steps["stuff"], lr, rng, log),
    }
    packs, examples = scorer_examples(model, views, log)
    losses["scorer"] = train_scorer(model, packs, examples, steps["scorer"], lr, rng, log)
    return losses


# ------------------------------------------------------------------------------------------ photo views
@torch.inference_mode()
def photo_views(model: InstanceRef, samples: list[RefSample], size: int, log: Any, mirrored: bool = True) -> list[PhotoView]:
    """Every photo of ``samples`` as it is (and mirrored), with its regions and single-target expressions."""
    by_photo: dict[str, list[RefSample]] = defaultdict(list)
    for sample in samples:
        by_photo[image_key(sample)].append(sample)
    views, start = [], time.monotonic()
    for n, (key, group) in enumerate(by_photo.items(), 1):
        rgb = group[0].load_image()
        shape = rgb.shape[:2]
        regions = [(label, decode_mask(rle, shape)) for label, rle in group[0].meta.category_regions or []]
        targets = [(s.sentence, s.load_mask(shape)) for s in group
                   if s.mask is not None and len(s.meta.region_ids or []) == 1]
        for flip in (False, True) if mirrored else (False,):
            views.append(_view(model, key, rgb, regions, targets, size, flip))
        if n % 100 == 0:
            log(f"photos {n}/{len(by_photo)} ({time.monotonic() - start:.0f} s)")
    return views


def _view(model: InstanceRef, key: str, rgb: np.ndarray, regions: list[tuple[int, np.ndarray]],
          targets: list[tuple[str, np.ndarray]], size: int, flip: bool) -> PhotoView:
    box = Letterbox(rgb.shape[0], rgb.shape[1], size)

    def on_canvas(array: np.ndarray) -> np.ndarray:  # photo-sized array → letterboxed (mirrored when flip)
        return np.ascontiguousarray(array[:, ::-1] if flip else array)

    canvas = to_tensor(box.image(on_canvas(rgb))).unsqueeze(0)
    keep = [t.half() for t in model.taps(canvas)]
    things, labels = [], torch.full((size // 8, size // 8), -1, dtype=torch.long)
    for label, mask in regions:
        mask = torch.from_numpy(box.mask(on_canvas(mask))).float()[None, None]
        cells = F.avg_pool2d(mask, 8)[0, 0] >= 0.5
        labels[cells] = THING_CLASS if label < NUM_THINGS else label - NUM_THINGS
        if label < NUM_THINGS and mask.any():
            things.append(mask)
    boxes, instance_masks = _boxes(things), (
        torch.cat([F.avg_pool2d(m, 2) for m in things])[:, 0].half() if things else torch.zeros(0, size // 2, size // 2))
    expressions = [
        (mirror_text(text) if flip else text,
         F.avg_pool2d(torch.from_numpy(box.mask(on_canvas(mask))).float()[None, None], 2)[0, 0] >= 0.5)
        for text, mask in targets
    ]
    return PhotoView(key, canvas, keep, boxes, instance_masks, labels, expressions)


def _boxes(masks: list[Tensor]) -> Tensor:
    out = []
    for mask in masks:
        ys, xs = torch.nonzero(mask[0, 0], as_tuple=True)
        out.append(torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float())
    return torch.stack(out) if out else torch.zeros(0, 4)


def _tap(view: PhotoView, stride: int) -> Tensor:
    return view.taps[(4, 8, 16, 32).index(stride)].float()


# ---------------------------------------------------------------------------------------------- stages
def _optimise(stage: str, parameters, steps: int, lr: float, batch_loss: Callable[[], Tensor], log: Any) -> float:
    """Adam on ``parameters`` for ``steps`` steps of ``batch_loss()``; returns the last loss."""
    optimizer = torch.optim.Adam(parameters, lr=lr)
    loss_value = float("nan")
    for step in range(steps):
        loss = batch_loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss_value = loss.item()
        if step % 250 == 0 or step == steps - 1:
            log(f"{stage} step {step}: loss {loss_value:.3f}")
    return loss_value


def _train_masks(model: InstanceRef, views: list[PhotoView], steps: int, lr: float, rng, log) -> float:
    """Stage 1: mask head on ground-truth boxes jittered by up to 10 % of their size (8 photos × 8 boxes)."""
    with_things = [v for v in views if v.boxes is not None and len(v.boxes)]

    def batch_loss() -> Tensor:
        taps, boxes, targets = [[] for _ in MASK_STRIDES], [], []
        for view in (with_things[i] for i in rng.choice(len(with_things), size=8)):
            pick = rng.choice(len(view.boxes), size=min(8, len(view.boxes)), replace=False)
            b = view.boxes[pick]
            wh = (b[:, 2:] - b[:, :2]).repeat(1, 2)
            jittered = b + wh * torch.from_numpy(rng.uniform(-0.1, 0.1, size=b.shape)).float()
            for t, s in zip(taps, MASK_STRIDES):
                t.append(_tap(view, s))
            boxes.append(jittered)
            targets.append(roi_align(view.instance_masks[pick].float()[:, None], jittered,
                                     torch.arange(len(pick)), MASK_SIZE, 2.0)[:, 0] >= 0.5)
        index = torch.cat([torch.full((len(b),), i) for i, b in enumerate(boxes)])
        logits = model.mask_head([torch.cat(t) for t in taps], torch.cat(boxes), index)[:, 0]
        return F.binary_cross_entropy_with_logits(logits, torch.cat(targets).float())

    return _optimise("masks", model.mask_head.parameters(), steps, lr, batch_loss, log)


def _train_stuff(model: InstanceRef, views: list[PhotoView], steps: int, lr: float, rng, log) -> float:
    """Stage 2: stuff head, cross-entropy over stuff classes + "thing" (unlabelled pixels ignored; 8 photos)."""

    def batch_loss() -> Tensor:
        batch = [views[i] for i in rng.choice(len(views), size=8)]
        taps = [torch.cat([_tap(v, s) for v in batch]) for s in STUFF_STRIDES]
        labels = torch.stack([v.stuff_labels for v in batch])
        return F.cross_entropy(model.stuff_head(taps), labels, ignore_index=-1)

    return _optimise("stuff", model.stuff_head.parameters(), steps, lr, batch_loss, log)


def train_scorer(model: InstanceRef, packs: list[list[Tensor]], examples: list[tuple[int, str, int]], steps: int,
                 lr: float, rng: np.random.Generator, log: Any) -> float:
    """Stage 3: the scorer, a softmax over each photo's candidates (``packs``, see :func:`scorer_examples`; 64 a step)."""
    if not examples:
        return float("nan")

    def batch_loss() -> Tensor:
        chosen = [examples[i] for i in rng.choice(len(examples), size=min(64, len(examples)))]
        candidates = Candidates.from_list([torch.cat([packs[p][j] for p, _, _ in chosen]) for j in range(len(packs[0]))])
        tokens, lengths = model.tokenize([text for _, text, _ in chosen])
        return model.scorer_loss(candidates, model.parser(tokens, lengths), torch.tensor([t for *_, t in chosen]))

    return _optimise("scorer", [model.cue_base, *model.word_cues.parameters()], steps, lr, batch_loss, log)


@torch.inference_mode()
def scorer_examples(model: InstanceRef, views: list[PhotoView], log: Any):
    """Candidates of every view (masks dropped once matched) and (view, text, target index) examples."""
    packs, examples, unmatched = [], [], 0
    for view in views:
        candidates = model.candidates(view.canvas, [t.float() for t in view.taps])
        masks = candidates.masks[0] >= 0.5  # [K, S/2, S/2]
        for text, target in view.expressions:
            inter = (masks & target).sum((-1, -2)).float()
            union = (masks | target).sum((-1, -2)).float().clamp(min=1)
            iou = (inter / union) * candidates.valid[0]
            best = int(iou.argmax())
            if iou[best] >= _MIN_TARGET_IOU:
                examples.append((len(packs), text, best))
            else:
                unmatched += 1
        candidates.masks = candidates.masks[:, :, :1, :1]  # the scorer needs neither masks nor maps
        candidates.stuff_map = candidates.stuff_map[:, :, :1, :1]
        packs.append(candidates.to_list())
    log(f"scorer: {len(examples)} expressions matched to a candidate, {unmatched} without one")
    return packs, examples


@torch.inference_mode()
def mask_quality(model: InstanceRef, samples: list[RefSample], size: int) -> dict[str, tuple[int, float, float]]:
    """Mean IoU of the mask head's masks with the thing regions of the photos of ``samples`` (canvas grid
    S/2), given each region's true box and given the detection that overlaps it best (box IoU ≥ 0.5;
    regions without one count 0); with the filled box as the mask for comparison."""
    from refseg.models.instance_ref import paste_masks

    given_truth, given_detection = [], []
    for view in photo_views(model, samples, size, log=lambda _: None, mirrored=False):
        if view.boxes is None or not len(view.boxes):
            continue
        taps = [t.float() for t in view.taps]
        detections = model.candidates(view.canvas, taps)
        truth = view.instance_masks.float() >= 0.5
        for boxes, scores in ((view.boxes, given_truth), (_matched(view.boxes, detections), given_detection)):
            found = boxes[:, 2] > boxes[:, 0]
            probs = model.instance_masks(taps[:3], boxes.clamp(min=0), size, size // 2)
            filled = paste_masks(torch.ones(len(boxes), 1, 1), boxes, size, size // 2) >= 0.5
            for k in range(len(boxes)):
                scores.append((_iou(probs[k] >= 0.5, truth[k]) * found[k], _iou(filled[k], truth[k]) * found[k]))
    out = {}
    for name, scores in (("true box", given_truth), ("best detection", given_detection)):
        values = torch.tensor(scores, dtype=torch.float32).view(-1, 2)
        out[name] = (len(values), float(values[:, 0].mean()), float(values[:, 1].mean()))
    return out


def _matched(truth: Tensor, candidates: Candidates) -> Tensor:
    """For each true box, the non-stuff candidate box overlapping it best (IoU ≥ 0.5), else a zero box."""
    boxes = candidates.boxes[0][(candidates.valid[0] > 0) & (candidates.stuff[0] == 0)]
    if not len(boxes):
        return torch.zeros_like(truth)
    lo = torch.maximum(truth[:, None, :2], boxes[None, :, :2])
    hi = torch.minimum(truth[:, None, 2:], boxes[None, :, 2:])
    inter = (hi - lo).clamp(min=0).prod(-1)
    iou = inter / (_area(truth)[:, None] + _area(boxes)[None] - inter).clamp(min=1e-6)
    best = iou.max(-1)
    return torch.where((best.values >= 0.5)[:, None], boxes[best.indices], torch.zeros_like(truth))


def _area(boxes: Tensor) -> Tensor:
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _iou(a: Tensor, b: Tensor) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 0.0
