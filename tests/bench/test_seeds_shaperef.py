"""python -m bench.seeds_shaperef: the markdown tables it writes into docs/results.md."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench import REPO
from bench.seeds_shaperef import ABLATIONS, HELD_OUT_WORDS, MODELS, THRESHOLDS, held_out_words, length_gain_verdict, planned_runs, render, verdict
from refseg.data.shapes import generate_samples

META = {"command": "python -m bench.seeds_shaperef", "size": 64, "n_train": 8, "n_test": 2, "data_seed": 0,
        "epochs": 1, "batch_size": 2, "lr": 1e-3, "seeds": [0], "n_held_out": 1}


def _result(mean_iou: float) -> dict:
    part = {"n": 1, "overall_iou": mean_iou, "mean_iou": mean_iou}
    return {
        **{f"prec@0.{k}": mean_iou for k in range(5, 10)}, "overall_iou": mean_iou, "mean_iou": mean_iou,
        "params": 10, "train_min": 0.5, "threshold": 0.3, "seeds": {"mean_iou": [mean_iou], "held_out_mean_iou": [mean_iou / 2]},
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


def test_claims_get_a_verdict_only_when_every_seed_agrees_and_the_difference_is_a_point():
    assert verdict([0.50, 0.52], [0.40, 0.45]) == "agrees"
    assert verdict([0.40, 0.45], [0.50, 0.52]) == "disagrees"
    assert verdict([0.50, 0.40], [0.45, 0.44]) == "inconclusive"  # the seeds overlap
    assert verdict([0.505], [0.50]) == "inconclusive"  # half a point


def test_claims_table_compares_the_runs_each_paper_names():
    results = {"rmi_baseline": _result(0.25), "rmi": _result(0.5), "step": _result(0.4)}
    claims = markdown_claims(render(results, META))
    assert "| RMI beats its R+LSTM baseline | paper 3, Tables 2-5 | RMI: 50.00 (50.00) | R+LSTM: 25.00 (25.00) | agrees |" in claims
    assert "| STEP beats RMI | paper 4, Table 3 | STEP: 40.00 (40.00) | RMI: 50.00 (50.00) | disagrees |" in claims
    assert "high-resolution" not in claims  # LSTM-CNN and its low-res stage were not trained


def test_rmi_gain_must_grow_five_points_from_the_shortest_to_the_longest_bucket():
    assert length_gain_verdict([0.02, 0.0, 0.08]) == "agrees"
    assert length_gain_verdict([0.095, 0.04, 0.033]) == "disagrees"
    assert length_gain_verdict([0.02, 0.5, 0.05]) == "inconclusive"  # only 3 points more
    assert length_gain_verdict([None, 0.1, 0.2]) == "inconclusive"


def test_the_length_claim_row_shows_each_buckets_gain_with_its_verdict():
    results = {"rmi_baseline": _result(0.25), "rmi": _result(0.5)}
    results["rmi"]["by_length"]["4+"]["overall_iou"] = 0.75  # +200 % on long expressions, +100 % on short
    claims = markdown_claims(render(results, META))
    assert "shortest to longest: +100.0 %, +200.0 % | | agrees |" in claims


def markdown_claims(markdown: str) -> str:
    return markdown.split("**(d)")[1]


def test_held_out_words_are_never_generated_and_replace_the_words_they_stand_for():
    samples = generate_samples(400, seed=0, size=64)
    vocabulary = {w for s in samples for w in s.sentence.split()}
    assert not vocabulary & set(HELD_OUT_WORDS.values())
    swapped = held_out_words(samples)
    assert swapped and all(not set(s.sentence.split()) & set(HELD_OUT_WORDS) for s in swapped)
    assert {s.id for s in swapped} <= {s.id for s in samples}


def test_ablations_run_only_with_the_model_they_ablate():
    assert [label for label, *_ in planned_runs(["rmi", "step"], with_ablations=True)] == ["rmi", "step", "step_2_folds"]
    assert planned_runs(["step"], with_ablations=False) == [("step", "step", {})]


@pytest.mark.slow
def test_smoke_mode_runs_every_model_and_two_seeds_without_touching_the_docs(tmp_path):
    docs = (REPO / "docs" / "results.md").read_text()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "bench.seeds_shaperef", "--smoke", "--out", str(tmp_path)],
                   check=True, env=env, cwd=REPO, capture_output=True, timeout=300)
    written = json.loads((tmp_path / "smoke" / "results.json").read_text())
    assert written["meta"]["seeds"] == [0, 1] and written["meta"]["size"] == 64
    assert list(written["results"]) == [*MODELS, *ABLATIONS]
    assert all(0.0 <= r["mean_iou"] <= 1.0 and "mean_iou_std" in r for r in written["results"].values())
    assert all(min(THRESHOLDS) <= r["threshold"] <= max(THRESHOLDS) for r in written["results"].values())  # seed mean
    assert (REPO / "docs" / "results.md").read_text() == docs


def test_kinds_reach_the_training_data_and_leave_the_full_runs_config_unchanged(tmp_path):
    from argparse import Namespace

    from bench.seeds_shaperef import run_config

    args = Namespace(size=64, per_scene=4, n=60, data_seed=0, lr=1e-3, epochs=1, batch_size=8, progress=False, kinds=None)
    full = run_config(args, "lstm_cnn", 0, tmp_path)
    assert "kinds" not in full["data"]["train"][0]["options"]  # --resume still matches the runs made before --kinds
    args.kinds = ["attribute"]
    assert run_config(args, "lstm_cnn", 0, tmp_path)["data"]["train"][0]["options"]["kinds"] == ["attribute"]
