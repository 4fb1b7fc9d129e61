"""`refseg eval`: model runs and PNG scoring agree exactly; post-processing maps logits back to the photo."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from refseg.api import Segmenter
from refseg.cli import main
from refseg.config import load_config
from refseg.data.manifest import read_manifest
from refseg.data.transforms import Letterbox
from refseg.engine.checkpoint import load_model
from refseg.engine.evaluator import evaluate, evaluation_segmenter, precision_curve
from refseg.engine.metrics import MetricAccumulator
from refseg.engine.trainer import train
from refseg.postprocess.masks import postprocess
from tests.fixtures.cli import run_refseg
from tests.fixtures.training import tiny_config_text, write_square_manifest


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(manifest, checkpoint) of a tiny model trained for two epochs on coloured squares."""
    root = tmp_path_factory.mktemp("eval")
    manifest = write_square_manifest(root / "data", 24, seed=2)
    config = root / "tiny.yaml"
    config.write_text(tiny_config_text(manifest, root / "run"))
    run = train(load_config(config))
    return manifest, run / "last.safetensors"


def test_model_eval_and_prediction_dir_scoring_agree(trained, tmp_path, capsys):
    manifest, checkpoint = trained
    preds = tmp_path / "preds"
    code, out, err = run_refseg(capsys, "eval", "--data", manifest, "--split", "val", "--model", checkpoint,
                                "--save-pred", preds, "--json", tmp_path / "model.json")
    assert code == 0, err
    assert "Segmentation metrics" in out and "expression length" in out
    code, _, err = run_refseg(capsys, "eval", "--data", manifest, "--split", "val", "--pred-dir", preds,
                              "--json", tmp_path / "pngs.json")
    assert code == 0, err
    from_model = json.loads((tmp_path / "model.json").read_text())
    from_pngs = json.loads((tmp_path / "pngs.json").read_text())
    assert from_model == from_pngs
    assert from_model["n"] == 6 and set(from_model["by_length"]) and "prec@0.9" in from_model
    samples = read_manifest(manifest, split="val")
    for sample in samples:  # one 0/255 PNG per sample, at the photo's size
        png = np.asarray(Image.open(preds / f"{sample.id}.png"))
        assert png.shape == sample.load_image().shape[:2]
        assert set(np.unique(png)) <= {0, 255}
    assert (tmp_path / "model.precision.png").is_file()
    assert Image.open(tmp_path / "model.precision.png").size == (640, 420)


def test_evaluation_masks_are_the_api_masks(trained, tmp_path):
    """One inference path: `refseg eval --save-pred` writes what `Segmenter.predict` returns."""
    manifest, checkpoint = trained
    preds = tmp_path / "preds"
    main(["eval", "--data", str(manifest), "--split", "val", "--model", str(checkpoint), "--save-pred", str(preds)])
    segmenter = Segmenter.from_pretrained(checkpoint, channels_last=False)  # evaluation's memory format
    for sample in read_manifest(manifest, split="val"):
        mask = segmenter.predict(sample.load_image(), sample.sentence).mask
        assert np.array_equal(np.asarray(Image.open(preds / f"{sample.id}.png")) > 0, mask)


def test_evaluator_scores_the_postprocessed_model_output(trained):
    manifest, checkpoint = trained
    model, meta = load_model(checkpoint)
    samples = read_manifest(manifest, split="val")
    accumulator = evaluate(evaluation_segmenter(model, meta["image_size"]), samples, batch_size=4)
    expected = MetricAccumulator()
    from refseg.data.dataset import RefDataset
    from refseg.engine.collate import Collator

    dataset = RefDataset(samples, meta["image_size"])
    with torch.no_grad():
        for i, sample in enumerate(samples):  # one at a time, by hand
            item = dataset[i]
            batch = Collator(model.tokenize)([item]).batch
            mask = postprocess(model(batch).logits[0], item.box).mask
            expected.add(mask, None if sample.mask is None else sample.load_mask(), sample.sentence, sample.id)
    assert accumulator.summary() == expected.summary()


def test_postprocess_maps_canvas_logits_back_to_the_original_size():
    box = Letterbox(30, 50, 20)  # image occupies the top 12 rows of the 20 x 20 canvas
    logits = torch.full((1, 20, 20), -8.0)
    logits[0, :12, :10] = 8.0  # left half of the image part
    result = postprocess(logits, box)
    assert result.prob.shape == (30, 50) and result.prob.dtype == np.float32
    assert result.mask[:, :22].all() and not result.mask[:, 28:].any()
    assert postprocess(logits[0] - 20.0, box).mask.sum() == 0
    assert postprocess(logits, box, threshold=1e-12).mask.all()


def test_precision_curve_counts_samples_with_a_target_only():
    acc = MetricAccumulator()
    target = np.zeros((4, 4), dtype=bool)
    target[:2, :2] = True
    acc.add(target, target, "a")  # IoU 1
    half = target.copy()
    half[:2, :1] = False
    acc.add(half, target, "b")  # IoU 0.5
    acc.add(np.zeros((4, 4), bool), None, "c")  # no target: not in precision
    xs, ys = precision_curve(acc, steps=5)
    assert xs.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert ys.tolist() == [1.0, 1.0, 1.0, 0.5, 0.5]


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "error: give exactly one data source"),
        (["--data", "{m}", "--pred-dir", "{t}", "--model", "x"], "error: --pred-dir scores existing PNGs"),
        (["--data", "{t}/none.jsonl"], "error: manifest not found"),
        (["--data", "{m}", "--model", "{t}/missing.safetensors"], "error: checkpoint not found"),
        (["--data", "{m}", "--pred-dir", "{t}/nothing"], "error: prediction folder not found"),
        (["--data", "{m}", "--split", "test", "--pred-dir", "{t}"], "error: no samples to evaluate"),
        (["--data", "{m}", "--length-buckets", "a,b", "--pred-dir", "{t}"], "error: --length-buckets must be"),
    ],
)
def test_eval_cli_errors_exit_2_with_one_line(trained, tmp_path, capsys, argv, message):
    manifest, _ = trained
    argv = [a.format(m=manifest, t=tmp_path) for a in argv]
    code, _, err = run_refseg(capsys, "eval", *argv)
    assert code == 2
    assert err.startswith(message) and err.count("\n") == 1
