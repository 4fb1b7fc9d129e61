"""Test helpers: a small ShapeRef batch, canvas IoU, and an overfitting loop on cached features."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from refseg.data.shapes import generate_samples
from refseg.data.transforms import letterbox, to_tensor
from refseg.models.base import Batch, RefSegModel


def text_batch(model: RefSegModel, texts: list[str], size: int = 64, seed: int = 0) -> Batch:
    """A batch of random images with the given expressions (for shape and gradient tests)."""
    tokens, lengths = model.tokenize(texts)
    images = torch.randn(len(texts), 3, size, size, generator=torch.Generator().manual_seed(seed))
    return Batch(images=images, tokens=tokens, lengths=lengths, texts=texts)


def shaperef_batch(model: RefSegModel, n: int = 4, size: int = 96, seed: int = 0, min_area: float = 0.04) -> Batch:
    """``n`` attribute expressions (two per scene, so the text matters) whose targets cover at
    least ``min_area`` of the image: a 1x1 classifier on stride-8 features cannot draw tiny shapes."""
    pool = generate_samples(8 * n, seed=seed, size=size, kinds=["attribute"], per_scene=2)
    samples = [s for s in pool if s.load_mask().mean() >= min_area][:n]
    images, masks, valid = [], [], []
    for sample in samples:
        rgb = sample.load_image()
        canvas, box = letterbox(rgb, size)
        images.append(to_tensor(canvas))
        masks.append(torch.from_numpy(box.mask(sample.load_mask(rgb.shape[:2]))).float()[None])
        valid.append(torch.from_numpy(box.valid()).float()[None])
    texts = [s.sentence for s in samples]
    tokens, lengths = model.tokenize(texts)
    return Batch(torch.stack(images), tokens, lengths, texts, torch.stack(masks), torch.stack(valid))


def canvas_iou(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Per-sample IoU of ``logits > 0`` (bilinearly resized to the canvas) inside the image."""
    size = batch.masks.shape[-2:]
    pred = (F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False) > 0) & (batch.valid > 0)
    target = batch.masks > 0.5
    inter = (pred & target).sum((1, 2, 3)).float()
    union = (pred | target).sum((1, 2, 3)).float()
    return inter / union.clamp(min=1)


def overfit(model: RefSegModel, batch: Batch, steps: int, lr: float = 3e-3, target_iou: float = 0.9) -> torch.Tensor:
    """Adam on cached backbone features until every IoU >= ``target_iou`` + 0.03 (a margin for
    the last update) or ``steps`` run out; returns the final IoUs."""
    with torch.no_grad():
        batch.features = model.encode_image(batch.images)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        out = model(batch)
        loss = model.loss(out, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if bool((canvas_iou(out.logits.detach(), batch) >= target_iou + 0.03).all()):
            break
    model.eval()
    with torch.no_grad():
        return canvas_iou(model(batch).logits, batch)
