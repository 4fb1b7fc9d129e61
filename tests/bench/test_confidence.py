"""bench/confidence.py: AUROC of the confidence on the human dev set."""
from __future__ import annotations


import numpy as np
import pytest

from bench import confidence
from refseg.api import Prediction


def test_auroc_is_the_chance_that_right_outranks_wrong() -> None:
    assert confidence.auroc([0.9, 0.8, 0.2, 0.1], [True, True, False, False]) == 1.0
    assert confidence.auroc([0.1, 0.2, 0.8, 0.9], [True, True, False, False]) == 0.0
    assert confidence.auroc([0.5, 0.5], [True, False]) == 0.5  # ties count half
    assert confidence.auroc([0.9, 0.3, 0.5, 0.1], [True, True, False, False]) == 0.75
    with pytest.raises(ValueError):
        confidence.auroc([0.1, 0.2], [True, True])


def _prediction(prob: np.ndarray, threshold: float, confidence: float) -> Prediction:
    return Prediction(text="x", tokens=["x"], mask=prob >= threshold, prob=prob, confidence=confidence)


def test_report_counts_and_ranks() -> None:
    prob = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    cases = [(0.5, 0.9, 0.8), (2.0, 0.2, 0.0), (0.9, 0.6, 0.1)]  # threshold, confidence, IoU
    results = [(_prediction(prob, t, c), iou) for t, c, iou in cases]
    text = confidence.report(results)
    assert text.startswith("3 expressions, 1 right (IoU >= 0.5), 2 wrong; 1 answered 'nothing found'.")
    assert "| `Prediction.confidence` | 1.000 |" in text


@pytest.mark.slow
def test_on_the_human_dev_set_the_confidence_beats_chance(shared_data) -> None:
    from bench.human_dev.build import load_human_dev
    from refseg.api import Segmenter

    items = load_human_dev(shared_data)[:60]
    results = confidence.predict_all(Segmenter.from_pretrained(), items)
    right = [value >= confidence.RIGHT_IOU for _, value in results]
    assert confidence.auroc([p.confidence for p, _ in results], right) > 0.6
