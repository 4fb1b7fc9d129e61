"""Run a model on samples → masks at the original size → the metrics accumulator.

Predictions go through :func:`refseg.postprocess.masks.postprocess` (the same path as the API
and the server) and are scored by :class:`~refseg.engine.metrics.MetricAccumulator` exactly as
``score_prediction_dir`` scores PNGs, so ``refseg eval --model M --save-pred D`` and
``refseg eval --pred-dir D`` give identical numbers.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from refseg.data.dataset import RefDataset
from refseg.engine.collate import Collator
from refseg.data.sample import RefSample
from refseg.engine.feature_cache import FeatureCache
from refseg.engine.metrics import DEFAULT_LENGTH_EDGES, MetricAccumulator
from refseg.models.base import RefSegModel
from refseg.postprocess.masks import DEFAULT_THRESHOLD, postprocess


def model_image_size(model: RefSegModel, meta: dict, default: int = 320) -> int:
    """The canvas size a model was trained at (checkpoint metadata or model config), else ``default``."""
    from refseg.limits import check_canvas_size

    size = next((s for s in (meta.get("image_size"), model.config.get("image_size")) if s is not None), default)
    return check_canvas_size(size)


def model_threshold(meta: dict) -> float:
    """The decision threshold stored with a model (chosen on held-out data when it was shipped),
    else :data:`~refseg.postprocess.masks.DEFAULT_THRESHOLD`."""
    from refseg.errors import CheckpointError

    threshold = float(meta.get("threshold", DEFAULT_THRESHOLD))
    if not 0.0 < threshold < 1.0:
        raise CheckpointError(f"checkpoint threshold must be between 0 and 1 (exclusive), got {threshold}")
    return threshold


@torch.inference_mode()
def evaluate(
    model: RefSegModel,
    samples: Sequence[RefSample],
    image_size: int,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    threshold: float = DEFAULT_THRESHOLD,
    crf: bool = False,
    save_pred: str | Path | None = None,
    feature_cache: FeatureCache | None = None,
    length_edges: Sequence[int] = DEFAULT_LENGTH_EDGES,
    autocast: Callable[[], object] = nullcontext,
    on_progress: Callable[[int, int], None] | None = None,
) -> MetricAccumulator:
    """Predict every sample and score it; optionally write ``save_pred/<id>.png`` (0/255).

    ``feature_cache`` (frozen backbones) supplies backbone taps instead of running the backbone;
    ``crf`` refines each probability map with DenseCRF (:mod:`refseg.postprocess.crf`).
    """
    device = torch.device(device)
    save_dir = Path(save_pred) if save_pred is not None else None
    if save_dir is not None:
        from refseg.errors import OutputError
        from refseg.io import child_path, save_mask_png

        try:
            save_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create prediction folder {save_dir}: {exc.strerror}") from None
        pred_paths = [child_path(save_dir, f"{sample.id}.png") for sample in samples]  # ids checked up front
    cached = feature_cache is not None
    dataset = RefDataset(samples, image_size, cached=cached, with_targets=True)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=Collator(model.tokenize))
    accumulator = MetricAccumulator(length_edges)
    was_training = model.training
    model.eval()
    done = 0
    for collated in loader:
        batch = collated.batch
        if cached:
            batch.features = feature_cache.features(model, image_size, collated.views, device)
        with autocast():
            logits = model(batch.to(device)).logits.float()
        for k, index in enumerate(collated.indices):
            sample = samples[index]
            prediction = postprocess(logits[k], collated.boxes[k], threshold)
            mask = prediction.mask
            if crf:
                mask = _refine(prediction.prob, sample, threshold)
            if save_dir is not None:
                save_mask_png(pred_paths[index], mask)
            accumulator.add(mask, collated.targets[k], sample.sentence, sample.id)
        done += len(collated.indices)
        if on_progress is not None:
            on_progress(done, len(samples))
    model.train(was_training)
    return accumulator


def _refine(prob: np.ndarray, sample: RefSample, threshold: float) -> np.ndarray:
    from refseg.postprocess.crf import refine

    return refine(prob, sample.load_image()) >= threshold


def precision_curve(accumulator: MetricAccumulator, steps: int = 21) -> tuple[np.ndarray, np.ndarray]:
    """prec@X for X in [0, 1] (``steps`` points) over the samples that have a target."""
    state = accumulator.state()
    ious = accumulator.ious()[state["has_target"]]
    thresholds = np.linspace(0.0, 1.0, steps)
    if not ious.size:
        return thresholds, np.zeros_like(thresholds)
    return thresholds, np.array([(ious >= t).mean() for t in thresholds])


def save_precision_plot(path: str | Path, curves: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """Draw precision-vs-IoU-threshold curves (one per label) as a PNG with Pillow, atomically."""
    from PIL import Image, ImageDraw, ImageFont

    from refseg.io import atomic_write_bytes, png_bytes

    width, height, left, right, top, bottom = 640, 420, 60, 20, 30, 50
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    plot_w, plot_h = width - left - right, height - top - bottom

    def xy(x: float, y: float) -> tuple[float, float]:
        return left + x * plot_w, top + (1.0 - y) * plot_h

    for k in range(11):  # grid and tick labels every 0.1
        v = k / 10
        draw.line([xy(v, 0), xy(v, 1)], fill=(230, 230, 230))
        draw.line([xy(0, v), xy(1, v)], fill=(230, 230, 230))
        draw.text((xy(v, 0)[0] - 8, top + plot_h + 6), f"{v:.1f}", fill="black", font=font)
        draw.text((left - 30, xy(0, v)[1] - 6), f"{v:.1f}", fill="black", font=font)
    draw.rectangle([xy(0, 1), xy(1, 0)], outline="black")
    draw.text((left + plot_w // 2 - 50, height - 20), "IoU threshold X", fill="black", font=font)
    draw.text((left, 8), "precision@X (fraction of samples with IoU >= X)", fill="black", font=font)
    palette = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207)]
    for i, (label, (xs, ys)) in enumerate(curves.items()):
        colour = palette[i % len(palette)]
        draw.line([xy(float(x), float(y)) for x, y in zip(xs, ys)], fill=colour, width=2)
        draw.line([(width - right - 150, top + 12 + 16 * i), (width - right - 130, top + 12 + 16 * i)], fill=colour, width=3)
        draw.text((width - right - 125, top + 6 + 16 * i), label, fill="black", font=font)
    return atomic_write_bytes(Path(path), png_bytes(image))
