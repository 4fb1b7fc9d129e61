"""python -m bench.seeds_shaperef: the markdown tables it writes into docs/results.md."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench import REPO
from bench.seeds_shaperef import MODELS, render

META = {"command": "python -m bench.seeds_shaperef", "size": 64, "n_train": 8, "n_test": 2, "data_seed": 0,
        "epochs": 1, "batch_size": 2, "lr": 1e-3, "seeds": [0]}


def _result(mean_iou: float) -> dict:
    part = {"n": 1, "overall_iou": mean_iou, "mean_iou": mean_iou}
    return {
        **{f"prec@0.{k}": mean_iou for k in range(5, 10)}, "overall_iou": mean_iou, "mean_iou": mean_iou,
        "params": 10, "train_min": 0.5,
        "by_length": {"1-3": dict(part), "4+": dict(part, mean_iou=mean_iou / 2)},
        "by_kind": {"category": dict(part)},
    }


def test_every_model_gets_its_row_in_every_table_without_rmi():
    markdown = render({"whole_image": _result(0.1), "lstm_cnn": _result(0.4)}, META)
    assert "RMI relative gain" not in markdown
    length_table = markdown.split("Mean IoU by length")[1].split("**(c)")[0]
    assert "| LSTM-CNN | 40.00 | 20.00 |" in length_table and "| whole image | 10.00 | 5.00 |" in length_table
    assert "| LSTM-CNN | 40.00 |" in markdown.split("**(c)")[1]


def test_rmi_gain_row_compares_with_lstm_cnn():
    markdown = render({"lstm_cnn": _result(0.4), "rmi": _result(0.5)}, META)
    assert "| RMI relative gain over LSTM-CNN | +25.0 % | +25.0 % |" in markdown


def test_rmi_gain_row_compares_with_its_own_baseline_when_present():
    """Paper 3's claim is RMI over R+LSTM (same features), not over paper 1's model."""
    markdown = render({"lstm_cnn": _result(0.4), "rmi_baseline": _result(0.25), "rmi": _result(0.5)}, META)
    assert "| RMI relative gain over R+LSTM | +100.0 % | +100.0 % |" in markdown
    assert "gain over LSTM-CNN" not in markdown


@pytest.mark.slow
def test_smoke_mode_runs_every_model_and_two_seeds_without_touching_the_docs(tmp_path):
    docs = (REPO / "docs" / "results.md").read_text()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "bench.seeds_shaperef", "--smoke", "--out", str(tmp_path)],
                   check=True, env=env, cwd=REPO, capture_output=True, timeout=300)
    written = json.loads((tmp_path / "smoke" / "results.json").read_text())
    assert written["meta"]["seeds"] == [0, 1] and written["meta"]["size"] == 64
    assert list(written["results"]) == list(MODELS)
    assert all(0.0 <= r["mean_iou"] <= 1.0 and "mean_iou_std" in r for r in written["results"].values())
    assert (REPO / "docs" / "results.md").read_text() == docs
