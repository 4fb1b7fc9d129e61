"""Segmentation metrics for referring expressions (Hu et al. 2016, §4.2; Liu et al. 2017, §4.3).

Every sample is scored at the original image resolution from two boolean masks:

* ``I`` = |prediction ∩ target|, ``U`` = |prediction ∪ target|, IoU = I / U;
* overall IoU = ΣI / ΣU over all samples (favours large regions), mean IoU = mean of per-sample IoU;
* prec@X = fraction of samples with IoU >= X, X in 0.5 … 0.9;
* IoU broken down by expression length (number of words, counted by the models' tokenizer
  :func:`refseg.models.text.split_words`), as in RMI's Tables 2–5.

No-target samples (target with no pixel; gRefCOCO convention): IoU is 1 when the prediction is
empty and 0 otherwise, their predicted area is added to ΣU (I = 0), and they are left out of
prec@X. :class:`MetricAccumulator` keeps per-sample counts, so accumulators of different DDP
processes can be merged exactly. See ``docs/evaluate.md``.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from refseg.data.images import load_label_map
from refseg.data.sample import RefSample
from refseg.errors import RefsegError
from refseg.io import child_path
from refseg.models.text import split_words

#: IoU thresholds of the precision metric (Hu et al. 2016, Table 1).
PREC_THRESHOLDS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)

#: Upper edges of the expression-length buckets of RMI's break-down tables (Liu et al. 2017,
#: Tables 2–5; four groups of roughly equal size per test set). The last bucket is open-ended:
#: the edges (2, 3, 5) give the buckets 1-2, 3, 4-5 and 6+.
LENGTH_BUCKETS: dict[str, tuple[int, ...]] = {
    "refcoco": (2, 3, 5),  # UNC, Table 3
    "refcoco+": (2, 3, 5),  # UNC+, Table 4
    "refcocog": (5, 7, 10),  # Google-Ref, Table 2
    "refclef": (1, 2, 4),  # ReferItGame, Table 5
}
#: Default buckets: UNC's (short, human-written expressions, as in RefCOCO/RefCOCO+).
DEFAULT_LENGTH_EDGES: tuple[int, ...] = LENGTH_BUCKETS["refcoco"]


class MaskShapeError(RefsegError):
    """A prediction does not have the size of its image / target mask."""


def length_bucket_labels(edges: Sequence[int]) -> list[str]:
    """Readable labels of the buckets given by ``edges``: (2, 3, 5) → 1-2, 3, 4-5, 6+."""
    _check_edges(edges)
    labels, low = [], 1
    for high in edges:
        labels.append(str(high) if high == low else f"{low}-{high}")
        low = high + 1
    return labels + [f"{low}+"]


def _check_edges(edges: Sequence[int]) -> None:
    if not edges or any(e < 1 for e in edges) or list(edges) != sorted(set(edges)):
        raise RefsegError(f"length buckets must be increasing positive word counts, got {list(edges)}")


def intersection_union(prediction: np.ndarray, target: np.ndarray | None) -> tuple[int, int]:
    """Pixel counts I and U of two boolean masks of the same shape (``None`` target = no target)."""
    prediction = np.asarray(prediction, dtype=bool)
    if target is None:
        return 0, int(prediction.sum())
    target = np.asarray(target, dtype=bool)
    if prediction.shape != target.shape:
        raise MaskShapeError(
            f"prediction is {_size(prediction.shape)} but the target is {_size(target.shape)}; "
            "score at the original image resolution"
        )
    return int(np.logical_and(prediction, target).sum()), int(np.logical_or(prediction, target).sum())


def _size(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape[:2][::-1]) if len(shape) >= 2 else str(shape)


def iou(prediction: np.ndarray, target: np.ndarray | None) -> float:
    """IoU of one sample; a target without pixels follows the no-target convention (1 iff empty)."""
    inter, union = intersection_union(prediction, target)
    has_target = target is not None and bool(np.any(target))
    return float(_iou_from_counts(np.array([inter]), np.array([union]), np.array([has_target]))[0])


def _iou_from_counts(inter: np.ndarray, union: np.ndarray, has_target: np.ndarray) -> np.ndarray:
    no_target_iou = (union == 0).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        target_iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return np.where(has_target, target_iou, no_target_iou)


class MetricAccumulator:
    """Collects per-sample I, U, target flag and expression length; reduces to :meth:`summary`.

    ``state()`` is a dict of numpy arrays; ``merge`` concatenates another accumulator (e.g. the
    states gathered from every DDP process with :meth:`gather`), so the result is exactly the
    one a single process would get.
    """

    _FIELDS = ("intersection", "union", "has_target", "n_words", "ids")

    def __init__(
        self,
        length_edges: Sequence[int] = DEFAULT_LENGTH_EDGES,
        thresholds: Sequence[float] = PREC_THRESHOLDS,
    ) -> None:
        _check_edges(length_edges)
        self.length_edges = tuple(int(e) for e in length_edges)
        self.thresholds = tuple(float(t) for t in thresholds)
        self._intersection: list[int] = []
        self._union: list[int] = []
        self._has_target: list[bool] = []
        self._n_words: list[int] = []
        self._ids: list[str] = []

    def __len__(self) -> int:
        return len(self._union)

    def add(
        self, prediction: np.ndarray, target: np.ndarray | None, sentence: str, sample_id: str = ""
    ) -> float:
        """Score one sample (boolean masks at the original resolution); returns its IoU."""
        inter, union = intersection_union(prediction, target)
        has_target = target is not None and bool(np.any(target))
        self.add_counts(inter, union, has_target, len(split_words(sentence)), sample_id)
        return float(_iou_from_counts(np.array([inter]), np.array([union]), np.array([has_target]))[0])

    def add_counts(
        self, intersection: int, union: int, has_target: bool, n_words: int, sample_id: str = ""
    ) -> None:
        """Record counts computed elsewhere (e.g. on the GPU); no-target samples have I = 0."""
        if not 0 <= intersection <= union or (not has_target and intersection):
            raise ValueError(f"inconsistent counts I={intersection} U={union} has_target={has_target}")
        self._intersection.append(int(intersection))
        self._union.append(int(union))
        self._has_target.append(bool(has_target))
        self._n_words.append(int(n_words))
        self._ids.append(str(sample_id))

    def state(self) -> dict[str, np.ndarray]:
        """Per-sample arrays (picklable, tensor-convertible) from which everything is computed."""
        return {
            "intersection": np.asarray(self._intersection, dtype=np.int64),
            "union": np.asarray(self._union, dtype=np.int64),
            "has_target": np.asarray(self._has_target, dtype=bool),
            "n_words": np.asarray(self._n_words, dtype=np.int64),
            "ids": np.asarray(self._ids, dtype=str),
        }

    def load_state(self, state: dict[str, np.ndarray]) -> "MetricAccumulator":
        """Append the samples of a :meth:`state` dict; returns ``self``."""
        missing = [k for k in self._FIELDS if k not in state]
        if missing:
            raise ValueError(f"metric state lacks {', '.join(missing)}")
        self._intersection += [int(v) for v in state["intersection"]]
        self._union += [int(v) for v in state["union"]]
        self._has_target += [bool(v) for v in state["has_target"]]
        self._n_words += [int(v) for v in state["n_words"]]
        self._ids += [str(v) for v in state["ids"]]
        return self

    def merge(self, other: "MetricAccumulator") -> "MetricAccumulator":
        """Append the samples of ``other`` (same buckets and thresholds); returns ``self``."""
        if (other.length_edges, other.thresholds) != (self.length_edges, self.thresholds):
            raise ValueError("cannot merge accumulators with different buckets or thresholds")
        return self.load_state(other.state())

    def gather(self) -> "MetricAccumulator":
        """All processes' samples, in rank order, when torch.distributed is initialised; else self."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self
        states: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(states, self.state())
        merged = MetricAccumulator(self.length_edges, self.thresholds)
        for state in states:
            merged.load_state(state)
        return merged

    def ious(self) -> np.ndarray:
        """Per-sample IoU, in the order the samples were added."""
        s = self.state()
        return _iou_from_counts(s["intersection"], s["union"], s["has_target"])

    def per_sample(self) -> list[dict[str, Any]]:
        """One record per sample: id, iou, intersection, union, has_target, n_words."""
        s, ious = self.state(), self.ious()
        return [
            {
                "id": str(s["ids"][i]),
                "iou": float(ious[i]),
                "intersection": int(s["intersection"][i]),
                "union": int(s["union"][i]),
                "has_target": bool(s["has_target"][i]),
                "n_words": int(s["n_words"][i]),
            }
            for i in range(len(self))
        ]

    def summary(self) -> dict[str, Any]:
        """overall_iou, mean_iou, prec@X, no-target counts, by_length and n (fractions in [0, 1]).

        A value is ``None`` when it is undefined (no samples, or no samples with a target).
        """
        s = self.state()
        ious = self.ious()
        result = self._scores(s["intersection"], s["union"], s["has_target"], ious)
        no_target = ~s["has_target"]
        result["n_no_target"] = int(no_target.sum())
        result["no_target_accuracy"] = float((s["union"][no_target] == 0).mean()) if no_target.any() else None
        bucket = np.searchsorted(np.asarray(self.length_edges), s["n_words"], side="left")
        result["by_length"] = {
            label: self._scores(s["intersection"][sel], s["union"][sel], s["has_target"][sel], ious[sel])
            for index, label in enumerate(length_bucket_labels(self.length_edges))
            for sel in [bucket == index]
        }
        return result

    def _scores(
        self, inter: np.ndarray, union: np.ndarray, has_target: np.ndarray, ious: np.ndarray
    ) -> dict[str, Any]:
        n = int(len(union))
        total_union = int(union.sum())
        scores: dict[str, Any] = {
            "overall_iou": (float(inter.sum() / total_union) if total_union else 1.0) if n else None,
            "mean_iou": float(ious.mean()) if n else None,
        }
        target_ious = ious[has_target]
        for threshold in self.thresholds:
            scores[f"prec@{threshold:g}"] = (
                float((target_ious >= threshold).mean()) if target_ious.size else None
            )
        scores["n"] = n
        return scores


def render_summary(summary: dict[str, Any], title: str = "Segmentation metrics"):
    """A rich renderable: the headline metrics, then IoU by expression length."""
    from rich.console import Group
    from rich.table import Table

    def fmt(value: Any) -> str:
        return "–" if value is None else f"{100 * value:.2f}"

    prec_keys = [k for k in summary if k.startswith("prec@")]
    # two-line headers keep the tables readable in an 80-column terminal
    metric_columns = ["overall\nIoU", "mean\nIoU", *(k.replace("@", "\n@") for k in prec_keys)]
    headline = Table(title=title)
    for column in ["n", *metric_columns]:
        headline.add_column(column, justify="right")
    headline.add_row(
        str(summary["n"]), fmt(summary["overall_iou"]), fmt(summary["mean_iou"]),
        *[fmt(summary[k]) for k in prec_keys],
    )
    parts: list[Any] = [headline]
    if summary.get("n_no_target"):
        parts.append(
            f"no-target samples: {summary['n_no_target']}, "
            f"correctly empty: {fmt(summary['no_target_accuracy'])} %"
        )
    by_length = Table(title="IoU by expression length (words)")
    for column in ["words", "n", *metric_columns]:
        by_length.add_column(column, justify="right")
    for label, scores in summary["by_length"].items():
        by_length.add_row(
            label, str(scores["n"]), fmt(scores["overall_iou"]), fmt(scores["mean_iou"]),
            *[fmt(scores[k]) for k in prec_keys],
        )
    parts.append(by_length)
    return Group(*parts)


def read_prediction_png(path: Path) -> np.ndarray:
    """A predicted mask PNG as boolean [H, W]: any non-zero value (palette index, grey, RGB) = target."""
    values = load_label_map(path, lambda im: np.asarray(im.convert("RGB") if im.mode in ("RGBA", "LA", "PA") else im))
    return values.any(axis=2) if values.ndim == 3 else values != 0


def score_prediction_dir(
    samples: Iterable[RefSample],
    pred_dir: str | Path,
    length_edges: Sequence[int] = DEFAULT_LENGTH_EDGES,
) -> MetricAccumulator:
    """Score ``pred_dir/<sample id>.png`` against every sample's target.

    A missing PNG counts as an empty prediction; a PNG of the wrong size raises
    :class:`MaskShapeError`. Returns the filled accumulator (call ``.summary()``).
    """
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise RefsegError(f"prediction folder not found: {pred_dir}")
    accumulator = MetricAccumulator(length_edges)
    for sample in samples:
        path = child_path(pred_dir, f"{sample.id}.png")
        photo = sample.image_shape()
        target = None if sample.mask is None else sample.load_mask(photo)
        if path.exists():
            prediction = read_prediction_png(path)
            expected = photo
            if prediction.shape != expected:
                raise MaskShapeError(
                    f"prediction {path} is {_size(prediction.shape)} but sample {sample.id} is "
                    f"{_size(expected)}; predictions must be at the original image size"
                )
        else:
            prediction = np.zeros(target.shape if target is not None else (0, 0), dtype=bool)
        accumulator.add(prediction, target, sample.sentence, sample.id)
    return accumulator
