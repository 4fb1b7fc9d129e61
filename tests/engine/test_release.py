"""refseg release: a run's model as one small file with its threshold and canvas (refseg.engine.release)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from refseg.api import Segmenter
from refseg.config import load_config, to_dict
from refseg.engine.checkpoint import WEIGHTS_DIR, load_model, save_model
from refseg.engine.release import MAX_RELEASE_BYTES, release, release_path
from refseg.errors import ConfigError, OutputError
from refseg.models import create_model

TINY_CONFIG = """model: {name: lstm_cnn}
data:
  image_size: 64
  train: [{kind: shaperef, n: 8, seed: 0, options: {size: 64}}]
  val: [{kind: shaperef, n: 8, seed: 1, options: {size: 64}}]
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run folder whose best checkpoint records trainer metrics and its training config."""
    folder = tmp_path_factory.mktemp("runs")
    config = folder / "tiny.yaml"
    config.write_text(TINY_CONFIG)
    torch.manual_seed(0)
    model = create_model("lstm_cnn", vocab=["left", "circle"], hidden=8, classifier=8)
    meta = {"image_size": 64, "metrics": {"mean_iou": 0.25}, "train_config": to_dict(load_config(config))}
    (folder / "tiny").mkdir()
    save_model(folder / "tiny" / "best.safetensors", model, meta)
    return folder / "tiny"


def test_release_writes_a_small_half_precision_model_that_loads(run_dir, tmp_path):
    done = release(run_dir, tmp_path / "shipped.safetensors", threshold=0.4, config="configs/tiny.yaml")
    with safe_open(str(done.path), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
        assert not any(k.startswith("backbone.") for k in f.keys())
    model, meta = load_model(done.path)
    assert model.name == "lstm_cnn" and meta["image_size"] == 64 and meta["threshold"] == 0.4
    assert meta["synthesized_val"] == {"mean_iou": 0.25} and meta["training_command"] == "refseg train configs/tiny.yaml"
    assert Segmenter.from_pretrained(done.path).threshold == 0.4
    assert done.path.stat().st_size <= MAX_RELEASE_BYTES


def test_release_stores_a_chosen_inference_canvas(run_dir, tmp_path):
    done = release(run_dir, tmp_path / "big.safetensors", threshold=0.4, image_size=96)
    assert load_model(done.path)[1]["image_size"] == 96 and Segmenter.from_pretrained(done.path).canvas == 96


def test_threshold_is_chosen_on_the_runs_synthesized_val(run_dir, tmp_path):
    done = release(run_dir, tmp_path / "chosen.safetensors", thresholds=(0.001, 0.5, 0.999))
    scores = done.val_mean_iou
    assert set(scores) == {0.001, 0.5, 0.999} and len(set(scores.values())) > 1  # all pixels, some, none
    assert scores[done.threshold] == max(scores.values())
    assert load_model(done.path)[1]["threshold_choice"] == {f"{t:g}": v for t, v in scores.items()}


def test_existing_files_are_kept_unless_forced(run_dir, tmp_path):
    target = tmp_path / "kept.safetensors"
    target.write_bytes(b"previous")
    with pytest.raises(OutputError, match="exists: pass --force"):
        release(run_dir, target, threshold=0.4)
    assert target.read_bytes() == b"previous"
    release(run_dir, target, threshold=0.3, force=True)
    assert load_model(target)[1]["threshold"] == 0.3


def test_bad_requests_are_one_line_errors(run_dir, tmp_path):
    with pytest.raises(ConfigError, match="between 0 and 1"):
        release(run_dir, tmp_path / "x.safetensors", threshold=1.0)
    with pytest.raises(ConfigError, match="--image-size must be between"):
        release(run_dir, tmp_path / "x.safetensors", threshold=0.4, image_size=5)
    with pytest.raises(OutputError, match="output folder does not exist"):
        release(run_dir, tmp_path / "missing" / "x.safetensors", threshold=0.4)
    bare = save_model(tmp_path / "bare.safetensors", load_model(run_dir / "best.safetensors")[0], {"image_size": 64})
    with pytest.raises(ConfigError, match="no training config: give --threshold"):
        release(bare, tmp_path / "y.safetensors")
    assert release_path("small_v2", None) == WEIGHTS_DIR / "small_v2.safetensors"
    for name, out in (("../evil", None), ("a", tmp_path / "a.safetensors"), (None, None)):
        with pytest.raises(ConfigError):
            release_path(name, out)


def test_cli_prints_the_file_and_refuses_to_overwrite(run_dir, tmp_path, capsys):
    from refseg.cli import main

    target = tmp_path / "cli.safetensors"
    with pytest.raises(SystemExit) as exit_info:
        main(["release", str(run_dir), "--out", str(target), "--threshold", "0.4"])
        raise SystemExit(0)
    assert (exit_info.value.code or 0) == 0 and "threshold 0.4, canvas 64 px" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["release", str(run_dir), "--out", str(target), "--threshold", "0.4"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "pass --force" in err
