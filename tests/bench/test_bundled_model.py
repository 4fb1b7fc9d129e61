"""python -m bench.bundled_model: comparing runs on synthesized val + human dev."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bench import bundled_model
from bench.human_dev.build import load_human_dev
from refseg.engine.checkpoint import save_model
from refseg.models import Batch, create_model


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = create_model("lstm_cnn", vocab=["left", "zebra"], hidden=8, classifier=8)
    run = tmp_path_factory.mktemp("runs") / "tiny"
    run.mkdir()
    save_model(run / "best.safetensors", model, {"image_size": 64, "metrics": {"mean_iou": 0.25, "overall_iou": 0.5}})
    return run


def test_compare_reports_val_and_human_dev(run_dir, shared_data):
    items = load_human_dev(shared_data)[:6]
    table = bundled_model.compare([run_dir], items).splitlines()
    assert table[0].startswith("| run | val mIoU")
    cells = [c.strip() for c in table[2].strip("|").split("|")]
    assert cells[:3] == ["tiny", "25.0", "50.0"]
    assert 0.0 <= float(cells[3]) <= 100.0


def test_threshold_sweep_scores_the_config_val_split_per_threshold(run_dir, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "model: {name: lstm_cnn}\n"
        "data:\n"
        "  image_size: 64\n"
        "  train: [{kind: shaperef, n: 8, seed: 0, options: {size: 64}}]\n"
        "  val: [{kind: shaperef, n: 8, seed: 1, options: {size: 64}}]\n"
    )
    table = bundled_model.threshold_sweep(run_dir, [0.0, 1.0], config=config).splitlines()
    assert table[0].startswith("| canvas | threshold | synth val mIoU") and len(table) == 4
    everything, nothing = (row.split(" | ") for row in table[2:])
    # threshold 0 marks every pixel, 1 (almost) none: the scores differ. The canvas is the run's own.
    assert everything[:2] == ["| 64", "0"] and nothing[:2] == ["| 64", "1"]
    assert everything[2] != nothing[2]
    resized = bundled_model.threshold_sweep(run_dir, [0.5], sizes=[32, 96], config=config).splitlines()
    assert [row.split(" | ")[0] for row in resized[2:]] == ["| 32", "| 96"]


def test_position_gap_scores_side_word_expressions_as_written_and_mirrored(tmp_path):
    from refseg.data.sample import RefSample

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    left_half = np.zeros((48, 64), dtype=bool)
    left_half[:, :32] = True
    sample = RefSample("a", image, "the zebra on the left", left_half)
    mirrored = RefSample("b", image, "the zebra on the right", left_half)
    others = [RefSample("c", image, "the zebra on the left", None), RefSample("d", image, "the zebra", left_half)]
    torch.manual_seed(0)
    model = create_model("lstm_cnn", vocab=["left", "right", "zebra"], hidden=8, classifier=8, text_coords="absolute")
    with torch.no_grad():  # centre the scores on 0 and let the text tilt them, so the masks differ
        model.head.text_coords.weight.normal_()
        tokens, lengths = model.tokenize([sample.sentence])
        batch = Batch(torch.from_numpy(np.zeros((1, 3, 64, 64), dtype=np.float32)), tokens, lengths)
        model.head.classifier[2].bias -= model(batch).logits.mean()
    checkpoint = save_model(tmp_path / "sided.safetensors", model, {"image_size": 64, "threshold": 0.5})
    (n, written, swapped), flipped, none = bundled_model.position_gap(checkpoint, [[sample, *others], [mirrored], others])
    assert n == 1 and written != swapped  # only the targeted side-word expression counts
    # the mirrored expression, scored as written, is the first one's mirrored score and vice versa
    assert flipped == (1, swapped, written)
    assert none == (0, None, None)


def test_instance_focus_tells_the_named_instance_from_its_category():
    from refseg.data.sample import Region, RefSample, SampleMeta
    from bench.human_dev.build import HumanDevItem

    left, right, grass = (np.zeros((4, 6), bool) for _ in range(3))
    left[0, :2] = True
    right[1, 3:] = True
    grass[3, :] = True
    regions = [Region(i, c, k, m, (0, 0, 1, 1), int(m.sum()), k < 100)
               for i, c, k, m in [(1, "zebra", 24, left), (2, "zebra", 24, right), (3, "grass", 124, grass)]]

    def item(target: int, kind: str) -> HumanDevItem:
        mask = regions[target - 1].mask
        return HumanDevItem(RefSample(str(target), np.zeros((4, 6, 3), np.uint8), "s", mask, meta=SampleMeta(kind=kind)),
                            regions, [target])
    zebra, meadow = item(1, "disambiguate"), item(3, "stuff")
    # both zebras marked: half the IoU with the one named, all of it with the category; grass left empty
    focus = bundled_model.instance_focus([zebra, meadow], [left | right, np.zeros((4, 6), bool)])
    assert focus == {"n": 1, "iou_target": 0.4, "iou_category": 1.0, "mask_area": 5 / 24, "target_area": 2 / 24, "empty": 1}
    exact = bundled_model.instance_focus([zebra], [left])
    assert (exact["iou_target"], exact["iou_category"], exact["empty"]) == (1.0, 0.4, 0)


def test_instances_table_reports_a_run_on_human_dev(run_dir, shared_data):
    items = load_human_dev(shared_data)[:8]
    table = bundled_model.instances([run_dir], items).splitlines()
    assert table[0].startswith("| run | disambiguation n | IoU with target")
    cells = [c.strip() for c in table[2].strip("|").split("|")]
    assert cells[0] == "tiny" and cells[1] == str(sum(i.kind == "disambiguate" for i in items))
    assert cells[-1].endswith("of 8")
