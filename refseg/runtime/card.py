"""The model card: what a loaded model is and how it predicts, resolved once by :func:`load_pretrained`."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from refseg.limits import check_canvas_size
from refseg.models.base import RefSegModel

#: Canvas side used when neither the caller nor the checkpoint names one.
DEFAULT_CANVAS = 320


@dataclass(frozen=True)
class Provenance:
    """Where a model's weights come from: the checkpoint file, its SHA-256, and whether it is
    shipped with refseg (``refseg/weights``) or was trained by the user."""

    path: Path
    sha256: str
    shipped: bool


@dataclass(frozen=True)
class ModelCard:
    """A loaded model's facts: architecture ``name``, inference ``canvas`` side S, decision
    ``threshold``, the ``labels`` its candidates are named by (empty for models without), the
    ``provenance`` of its weights (None for a model built in memory) and the checkpoint ``meta``."""

    name: str
    canvas: int
    threshold: float
    labels: tuple[str, ...] = ()
    provenance: Provenance | None = None
    meta: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def describe(
        cls, model: RefSegModel, meta: dict[str, Any] | None = None, canvas: int | None = None,
        provenance: Provenance | None = None,
    ) -> "ModelCard":
        """The card of ``model``: canvas = ``canvas``, else the checkpoint's, else the model config's,
        else :data:`DEFAULT_CANVAS`; threshold = the checkpoint's, else 0.5."""
        meta = dict(meta or {})
        side = next((s for s in (canvas, meta.get("image_size"), model.config.get("image_size")) if s is not None),
                    DEFAULT_CANVAS)
        return cls(
            name=model.name,
            canvas=check_canvas_size(side),
            threshold=stored_threshold(meta),
            labels=tuple(model.label_names()),
            provenance=provenance,
            meta=meta,
        )

    def with_canvas(self, canvas: int | None) -> "ModelCard":
        """This card at another canvas side (None: unchanged)."""
        return self if canvas is None else replace(self, canvas=check_canvas_size(canvas))


def stored_threshold(meta: dict[str, Any]) -> float:
    """The decision threshold stored with a model (chosen on held-out data when it was shipped),
    else :data:`~refseg.postprocess.masks.DEFAULT_THRESHOLD`."""
    from refseg.errors import CheckpointError
    from refseg.postprocess.masks import DEFAULT_THRESHOLD

    threshold = float(meta.get("threshold", DEFAULT_THRESHOLD))
    if not 0.0 < threshold < 1.0:
        raise CheckpointError(f"checkpoint threshold must be between 0 and 1 (exclusive), got {threshold}")
    return threshold


def load_pretrained(
    name_or_path: str | Path | None = None, device: str | torch.device = "cpu", canvas: int | None = None
) -> tuple[RefSegModel, ModelCard]:
    """The one model loader: the bundled model (None / ``"default"``), a shipped model by name, a
    run folder or a checkpoint file → ``(model in eval mode, its card)``. ``canvas`` overrides
    the canvas side the model was trained at."""
    from refseg.engine.checkpoint import WEIGHTS_DIR, load_model, resolve_model_path
    from refseg.io import file_sha256

    path = resolve_model_path(name_or_path)
    model, meta = load_model(path, device=device)
    provenance = Provenance(path, file_sha256(path), shipped=path.resolve().parent == WEIGHTS_DIR)
    return model, ModelCard.describe(model, meta, canvas, provenance)
