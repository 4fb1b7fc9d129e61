"""Training loop: outputs of a run, exact resume, augmentation that keeps text and mask consistent."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from refseg.config import load_config
from refseg.data.dataset import RefDataset, _crop_keeping_target, mirror_text
from refseg.data.sample import RefSample
from refseg.engine import trainer as trainer_module
from refseg.engine.checkpoint import load_model, load_training_state
from refseg.engine.trainer import Trainer, read_csv, train
from refseg.errors import CheckpointError, ConfigError
from tiny_engine_model import NAME, square_samples, tiny_config_text, write_square_manifest


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return write_square_manifest(tmp_path_factory.mktemp("squares"), 24, seed=1)


def make_config(tmp_path: Path, manifest: Path, name: str, *overrides: str, **train: object):
    path = tmp_path / f"{name}.yaml"
    path.write_text(tiny_config_text(manifest, tmp_path / name, **train))
    return load_config(path, list(overrides))


def test_run_writes_logs_config_and_checkpoints(tmp_path, manifest):
    out = train(make_config(tmp_path, manifest, "run", epochs=3))
    assert {"config.yaml", "train.csv", "val.csv", "last.safetensors", "last_state.pt", "best.safetensors"} <= {
        p.name for p in out.iterdir()
    }
    rows = read_csv(out / "train.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 16))  # 18 train samples / batch 4 → 5 steps per epoch
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    val = read_csv(out / "val.csv")
    assert [int(r["epoch"]) for r in val] == [1, 2, 3] and all(int(r["n"]) == 6 for r in val)
    model, meta = load_model(out / "last.safetensors")
    assert model.name == NAME and meta["epoch"] == 3 and meta["image_size"] == 32
    best_epoch = max(val, key=lambda r: float(r["mean_iou"]))["epoch"]
    assert load_model(out / "best.safetensors")[1]["epoch"] == int(best_epoch)
    assert load_training_state(out / "last_state.pt")["step"] == 15
    # the saved config reproduces the run's config
    assert load_config(out / "config.yaml") == load_config(out / "config.yaml", [f"train.out_dir={out}"])
    assert load_config(out / "config.yaml").model.kwargs == {"dim": 8}


class Interrupt(Exception):
    pass


def _interrupt_after_saves(monkeypatch, n: int) -> None:
    """Make the run die right after its n-th checkpoint (as if the machine went down)."""
    original = Trainer._save
    calls = {"n": 0}

    def save_then_die(self, *args, **kwargs):
        original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == n:
            raise Interrupt

    monkeypatch.setattr(Trainer, "_save", save_then_die)


@pytest.mark.parametrize("cached", [True, False])
def test_resume_continues_exactly(tmp_path, manifest, monkeypatch, cached):
    overrides = [f"data.cache_features={cached}", "data.augment.crop=0.5"]
    full = train(make_config(tmp_path, manifest, "full", *overrides, epochs=3))
    with monkeypatch.context() as patch:
        _interrupt_after_saves(patch, 1)
        with pytest.raises(Interrupt):
            train(make_config(tmp_path, manifest, "cut", *overrides, epochs=3))
    cut_rows = read_csv(tmp_path / "cut" / "train.csv")
    assert max(int(r["step"]) for r in cut_rows) == 5
    resumed = train(make_config(tmp_path, manifest, "cut", *overrides, epochs=3), resume=tmp_path / "cut")
    full_rows, resumed_rows = read_csv(full / "train.csv"), read_csv(resumed / "train.csv")
    assert [r["loss"] for r in resumed_rows] == [r["loss"] for r in full_rows]
    assert [r["lr"] for r in resumed_rows] == [r["lr"] for r in full_rows]
    a, _ = load_model(full / "last.safetensors")
    b, _ = load_model(resumed / "last.safetensors")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


def test_resume_mid_epoch_when_iterations_stop_inside_an_epoch(tmp_path, manifest, monkeypatch):
    full = train(make_config(tmp_path, manifest, "full", iterations=8))
    with monkeypatch.context() as patch:
        _interrupt_after_saves(patch, 1)
        with pytest.raises(Interrupt):
            train(make_config(tmp_path, manifest, "cut", iterations=8))
    state = load_training_state(tmp_path / "cut" / "last_state.pt")
    assert (state["epoch"], state["skip_batches"]) == (1, 0)
    resumed = train(make_config(tmp_path, manifest, "cut", iterations=8), resume=tmp_path / "cut" / "last.safetensors")
    assert read_csv(resumed / "train.csv") == read_csv(full / "train.csv")
    assert load_training_state(resumed / "last_state.pt")["step"] == 8


def test_a_second_run_in_the_same_folder_is_refused(tmp_path, manifest):
    config = make_config(tmp_path, manifest, "run", epochs=1)
    train(config)
    with pytest.raises(ConfigError, match="--resume"):
        train(config)
    with pytest.raises(CheckpointError, match="not found"):
        train(config, resume=tmp_path / "nowhere")


def test_unknown_model_key_is_a_config_error(tmp_path, manifest):
    with pytest.raises(ConfigError, match="did you mean 'dim'"):
        train(make_config(tmp_path, manifest, "run", "model.dimm=4", epochs=1))


def test_mirror_text_swaps_left_and_right_words():
    assert mirror_text("Left dog, right of the LEFTMOST car") == "Right dog, left of the RIGHTMOST car"
    assert mirror_text("the man on the left-hand side") == "the man on the right-hand side"
    assert mirror_text("leftover cake at the bright window") == "leftover cake at the bright window"


def test_flip_keeps_expression_and_mask_consistent():
    samples = square_samples(8, seed=5)
    augment = load_config(None, ["data.augment.hflip=1.0"]).data.augment
    dataset = RefDataset(samples, 32, augment, seed=0)
    for index, sample in enumerate(samples):
        item = dataset[index]
        assert item["view"][1] is True
        assert item["text"] == mirror_text(sample.sentence) != sample.sentence
        if sample.mask is not None:
            box = item["box"]
            expected = np.ascontiguousarray(sample.load_mask()[:, ::-1])
            assert np.array_equal(item["mask"][0].numpy() > 0.5, box.mask(expected))


def test_augmentation_depends_only_on_seed_epoch_and_index():
    samples = square_samples(6, seed=2)
    augment = load_config(None, ["data.augment.crop=1.0", "data.augment.hflip=0.5"]).data.augment
    a, b = RefDataset(samples, 32, augment, seed=7), RefDataset(samples, 32, augment, seed=7)
    a.set_epoch(3), b.set_epoch(3)
    from_a = {i: a[i]["image"] for i in reversed(range(6))}  # access order does not matter
    assert all(torch.equal(from_a[i], b[i]["image"]) for i in range(6))
    b.set_epoch(4)
    assert any(not torch.equal(a[i]["image"], b[i]["image"]) for i in range(6))


@pytest.mark.parametrize("seed", range(20))
def test_crop_keeps_the_whole_target(seed):
    rng = np.random.default_rng(seed)
    mask = np.zeros((50, 70), dtype=bool)
    y, x = rng.integers(0, 40), rng.integers(0, 60)
    mask[y : y + 10, x : x + 10] = True
    rgb = rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)
    crop_rgb, crop_mask = _crop_keeping_target(rgb, mask, (0.5, 0.9), rng)
    assert crop_mask.sum() == mask.sum()
    assert crop_rgb.shape[:2] == crop_mask.shape
    assert crop_mask.shape[0] <= 50 and crop_mask.shape[1] <= 70


def test_copy_paste_makes_the_pasted_instance_the_target():
    base = square_samples(6, seed=9)
    donor = RefSample(id="donor", image=base[0].image, sentence="x", mask=base[0].mask, source="t",
                      image_id="donor", meta={"category": "kite", "image_categories": ["kite"]})
    dest = [RefSample(id=s.id, image=s.image, sentence=s.sentence, mask=s.mask, source="t", image_id=s.id,
                      meta={"image_categories": ["square"]}) for s in base[1:]]
    augment = load_config(None, ["data.augment.copy_paste=1.0", "data.augment.hflip=0"]).data.augment
    dataset = RefDataset([donor, *dest], 32, augment, seed=0)
    item = dataset[1]
    assert item["text"] == "the kite" and item["view"] is None
    donor_pixels = donor.load_mask().sum()
    assert 0 < item["mask"].sum() and donor_pixels > 0
