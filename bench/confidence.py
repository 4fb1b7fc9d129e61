"""Does the confidence rank right masks above wrong ones? AUROC on the human dev set.

    python -m bench.confidence [--model default] [--data ../shared/data]

Runs the model on the human-written dev set (bench/human_dev) through ``Segmenter.predict``, the
path users call, and calls a prediction right when its IoU with the target is >= 0.5. AUROC is
the chance that a random right prediction has a higher confidence than a random wrong one
(0.5 = no better than chance, 1 = perfect), the Mann-Whitney U statistic over (right x wrong).
Other rankings one could use instead are printed below it for comparison. Skips cleanly (exit 0)
without the shared data.
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from bench.human_dev.build import DEFAULT_DATA_ROOT, HumanDevItem, load_human_dev

RIGHT_IOU = 0.5

#: rankings compared with ``Prediction.confidence`` (higher = more likely right)
ALTERNATIVES: dict[str, Callable] = {
    "highest probability in the photo": lambda p: float(p.prob.max()),
    "smaller mask (1 - area)": lambda p: 1.0 - p.area,
    "certainty (mean of abs(2p - 1))": lambda p: float(np.abs(2.0 * p.prob - 1.0).mean()),
}


def auroc(scores: Sequence[float], right: Sequence[bool]) -> float:
    """Probability that a right item outranks a wrong one (ties count half)."""
    from scipy.stats import mannwhitneyu

    scores, right = np.asarray(scores, dtype=float), np.asarray(right, dtype=bool)
    if right.all() or not right.any():
        raise ValueError("AUROC needs both right and wrong predictions")
    statistic = mannwhitneyu(scores[right], scores[~right]).statistic
    return float(statistic / (right.sum() * (~right).sum()))


def predict_all(segmenter, items: Sequence[HumanDevItem]) -> list[tuple[object, float]]:
    """(prediction, IoU) per item, in order; each photo is encoded once."""
    from refseg.engine.metrics import iou

    by_photo: dict[object, list[int]] = defaultdict(list)
    for index, item in enumerate(items):
        by_photo[item.sample.image_id].append(index)
    results: list[tuple[object, float] | None] = [None] * len(items)
    for indices in by_photo.values():
        rgb = items[indices[0]].sample.load_image()
        predictions = segmenter.predict(rgb, [items[i].sample.sentence for i in indices])
        for i, prediction in zip(indices, predictions):
            results[i] = (prediction, iou(prediction.mask, items[i].sample.load_mask(rgb.shape[:2])))
    return results


def report(results: Sequence[tuple[object, float]]) -> str:
    """Markdown: counts and the AUROC of the confidence and of the alternatives."""
    right = [value >= RIGHT_IOU for _, value in results]
    predictions = [p for p, _ in results]
    empty = sum(p.empty for p in predictions)
    lines = [
        f"{len(results)} expressions, {sum(right)} right (IoU >= {RIGHT_IOU}), "
        f"{len(results) - sum(right)} wrong; {empty} answered 'nothing found'.",
        "",
        "| ranking | AUROC right vs wrong |",
        "|---|---:|",
        f"| `Prediction.confidence` | {auroc([p.confidence for p in predictions], right):.3f} |",
    ]
    for name, rank in ALTERNATIVES.items():
        lines.append(f"| {name} | {auroc([rank(p) for p in predictions], right):.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint, run folder or shipped name (default: bundled)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_ROOT, help="the shared data folder")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"skipped: shared data folder not found at {args.data}")
        return 0
    from refseg.api import Segmenter

    print(report(predict_all(Segmenter.from_pretrained(args.model), load_human_dev(args.data))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
