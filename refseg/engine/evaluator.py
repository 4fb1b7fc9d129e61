"""Run a :class:`~refseg.api.Segmenter` on samples → masks at the original size → the metrics accumulator.

The network runs through the segmenter's runner (``torch`` or ``onnx``, :mod:`refseg.runtime`)
and every mask comes from :meth:`Segmenter.decode <refseg.api.Segmenter.decode>`, the
post-processing of the API, the CLI and the server (threshold, DenseCRF, confidence). Masks
are scored by :class:`~refseg.engine.metrics.MetricAccumulator` exactly as
``score_prediction_dir`` scores PNGs, so ``refseg eval --model M --save-pred D`` and
``refseg eval --pred-dir D`` give identical numbers.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader

from refseg.data.dataset import RefDataset
from refseg.engine.collate import Collator
from refseg.data.sample import RefSample
from refseg.engine.feature_cache import FeatureCache
from refseg.engine.metrics import DEFAULT_LENGTH_EDGES, MetricAccumulator

from refseg.runtime.card import ModelCard

if TYPE_CHECKING:
    from refseg.api import Segmenter
    from refseg.models.base import RefSegModel

#: Runner options of evaluation: torch keeps the plain memory format, so ``refseg eval`` of a
#: checkpoint gives exactly the numbers of the trainer's validation.
EVAL_RUNNER_OPTIONS = {"torch": {"channels_last": False}}


def load_for_evaluation(
    name_or_path: str | Path | None = None, runtime: str = "torch", device: str = "cpu", canvas: int | None = None
) -> "Segmenter":
    """:meth:`Segmenter.from_pretrained <refseg.api.Segmenter.from_pretrained>` with the evaluation runner options."""
    from refseg.api import Segmenter

    return Segmenter.from_pretrained(
        name_or_path, device=device, runtime=runtime, canvas=canvas, **EVAL_RUNNER_OPTIONS.get(runtime, {})
    )


def evaluation_segmenter(
    model: "RefSegModel", canvas: int | None = None, card: "ModelCard | None" = None, device: str | torch.device = "cpu"
) -> "Segmenter":
    """A :class:`~refseg.api.Segmenter` over a model in hand (training, benchmarks), with the
    evaluation options of the torch runner."""
    from refseg.api import Segmenter
    from refseg.runtime import create_runner

    card = (card or ModelCard.describe(model)).with_canvas(canvas)
    return Segmenter(model, runner=create_runner("torch", model, card, device, **EVAL_RUNNER_OPTIONS["torch"]), card=card)


def evaluate(
    segmenter: "Segmenter",
    samples: Sequence[RefSample],
    batch_size: int = 16,
    threshold: float | None = None,
    crf: bool = False,
    save_pred: str | Path | None = None,
    feature_cache: FeatureCache | None = None,
    length_edges: Sequence[int] = DEFAULT_LENGTH_EDGES,
    autocast: Callable[[], object] = nullcontext,
    on_progress: Callable[[int, int], None] | None = None,
) -> MetricAccumulator:
    """Predict every sample at the segmenter's canvas and score it; optionally write
    ``save_pred/<id>.png`` (0/255).

    ``threshold`` defaults to the model's; ``crf`` refines each probability map with DenseCRF;
    ``feature_cache`` (torch runner) supplies backbone taps instead of running the backbone.
    Samples run in batches of ``batch_size`` (one photo per expression).
    """
    threshold = segmenter.check_options(threshold, crf)
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
    dataset = RefDataset(samples, segmenter.canvas, cached=cached, with_targets=True)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=Collator(segmenter.model.tokenize))
    accumulator = MetricAccumulator(length_edges)
    done = 0
    for collated in loader:
        batch = collated.batch
        with autocast():
            out = segmenter.runner.run(_features(segmenter, collated, feature_cache), batch.tokens, batch.lengths, batch.texts)
        for k, index in enumerate(collated.indices):
            sample = samples[index]
            photo = sample.load_image() if crf else None
            mask = segmenter.decode(out, k, collated.boxes[k], threshold, photo).mask
            if save_dir is not None:
                save_mask_png(pred_paths[index], mask)
            accumulator.add(mask, collated.targets[k], sample.sentence, sample.id)
        done += len(collated.indices)
        if on_progress is not None:
            on_progress(done, len(samples))
    return accumulator


def _features(segmenter: "Segmenter", collated, feature_cache: FeatureCache | None):
    """The runner's image features of a batch: encoded now, or taken from ``feature_cache``."""
    runner = segmenter.runner
    if feature_cache is None:
        return runner.encode_image(collated.batch.images)
    from refseg.runtime.torch_runner import ImageFeatures, TorchRunner

    if not isinstance(runner, TorchRunner):
        from refseg.errors import ConfigError

        raise ConfigError("a feature cache needs the torch runtime")
    taps = feature_cache.features(segmenter.model, segmenter.canvas, collated.views, runner.device)
    return ImageFeatures.cached(taps, len(collated.views), segmenter.canvas, runner.device)


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
