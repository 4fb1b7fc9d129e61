"""Training loop: outputs of a run, exact resume, augmentation that keeps text and mask consistent."""
from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from refseg.config import load_config
from refseg.data.augment import crop_window, has_position_words, mirror_text
from refseg.data.dataset import RefDataset
from refseg.engine.collate import Collator
from refseg.data.sample import RefSample, SampleMeta
from refseg.engine.checkpoint import load_model, load_training_state
from refseg.engine.checkpointer import Checkpointer
from refseg.engine.hooks import read_csv
from refseg.engine.trainer import _TrainStep, train
from refseg.errors import CheckpointError, ConfigError
from refseg.models.base import Batch, list_models, register
from refseg.models.losses import distractor_logistic
from tests.fixtures.training import NAME, TinyEngineModel, square_samples, tiny_config_text, write_square_manifest

REPO = Path(__file__).resolve().parents[2]


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
    original = Checkpointer.save
    calls = {"n": 0}

    def save_then_die(self, *args, **kwargs):
        original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == n:
            raise Interrupt

    monkeypatch.setattr(Checkpointer, "save", save_then_die)


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


def test_resume_inside_an_epoch_skips_the_batches_already_done(tmp_path, manifest):
    # 5 steps per epoch: a run stopped by iterations=8 ends 3 batches into epoch 2
    full = train(make_config(tmp_path, manifest, "full", "train.schedule=constant", iterations=12))
    cut = train(make_config(tmp_path, manifest, "cut", "train.schedule=constant", iterations=8))
    state = load_training_state(cut / "last_state.pt")
    assert (state["epoch"], state["skip_batches"], state["step"]) == (1, 3, 8)
    resumed = train(make_config(tmp_path, manifest, "cut", "train.schedule=constant", iterations=12),
                    resume=cut / "last.safetensors")
    assert read_csv(resumed / "train.csv") == read_csv(full / "train.csv")
    assert load_training_state(resumed / "last_state.pt")["step"] == 12


class _StagedTiny(TinyEngineModel):
    """The tiny model with stages, so the trainer runs the two-stage schedule."""

    stages = ("low", "high")

    def __init__(self, stage: str = "high", **options: object) -> None:
        super().__init__(**options)
        self.config["stage"] = stage
        self.set_stage(stage)


STAGED = "_test_engine_staged"
if STAGED not in list_models():
    register(STAGED)(_StagedTiny)


@pytest.mark.parametrize("restart", [False, True])
def test_stage_restart_starts_a_fresh_schedule_and_optimiser_state(tmp_path, manifest, monkeypatch, restart):
    """5 steps per epoch, low_res_epochs=1: step 6 is the first of the high-resolution stage."""
    import refseg.engine.trainer as trainer

    state_sizes: list[int] = []
    build = trainer.build_optimizer

    def spying_build(config, model):
        optimizer = build(config, model)
        optimizer.register_step_pre_hook(lambda opt, args, kwargs: state_sizes.append(len(opt.state)))
        return optimizer

    monkeypatch.setattr(trainer, "build_optimizer", spying_build)
    config = make_config(tmp_path, manifest, "staged", f"model.name={STAGED}", epochs=3, low_res_epochs=1,
                         stage_restart=restart)
    rows = read_csv(train(config) / "train.csv")
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[0] == pytest.approx(0.05) and lrs[4] < lrs[0]
    assert (lrs[5] == pytest.approx(0.05)) is restart  # the high stage starts at the base rate again
    assert state_sizes[0] == 0 and state_sizes[4] > 0
    assert (state_sizes[5] == 0) is restart  # momentum buffers are not carried over the switch
    # each stage runs poly over its own steps: [5 low steps] then [10 high steps]
    factors = [trainer.lr_factor(config, step, 15, 5) for step in range(15)]
    expected = [(1 - s / 5) ** 0.9 for s in range(5)] + [(1 - s / 10) ** 0.9 for s in range(10)]
    assert (factors == pytest.approx(expected)) is restart


def test_a_second_run_in_the_same_folder_is_refused(tmp_path, manifest):
    config = make_config(tmp_path, manifest, "run", epochs=1)
    train(config)
    with pytest.raises(ConfigError, match="--resume"):
        train(config)
    with pytest.raises(CheckpointError, match="not found"):
        train(config, resume=tmp_path / "nowhere")


def test_iou_loss_weight_adds_the_soft_iou_term(tmp_path, manifest):
    def first_loss(name: str, weight: float) -> float:
        config = make_config(tmp_path, manifest, name, f"train.iou_loss_weight={weight}", epochs=1)
        return float(read_csv(train(config) / "train.csv")[0]["loss"])

    # same seed, same first batch and weights: the first logged loss differs by weight × the
    # soft-IoU term, which lies in (0, 1]
    plain = first_loss("plain", 0.0)
    extra, double = first_loss("iou", 1.0) - plain, first_loss("iou2", 2.0) - plain
    assert 0.0 < extra <= 1.0
    assert double == pytest.approx(2 * extra, rel=1e-3)
    with pytest.raises(ConfigError, match="iou_loss_weight"):
        train(make_config(tmp_path, manifest, "negative", "train.iou_loss_weight=-1", epochs=1))


def test_distractor_weight_adds_the_distractor_term(tmp_path, manifest):
    model = TinyEngineModel().eval()  # no dropout: the same logits in every call
    images = torch.rand(2, 3, 8, 8)
    masks = torch.zeros(2, 1, 8, 8)
    masks[:, :, :4, :4] = 1
    categories = torch.full((2, 8, 8), 5)  # the whole photo is the target's category
    tokens, lengths = model.tokenize(["the left one", "the left one"])
    batch = Batch(images=images, tokens=tokens, lengths=lengths, masks=masks, valid=torch.ones_like(masks),
                  categories=categories, target_categories=torch.tensor([5, -1]))
    plain, logits = _TrainStep(model)(batch)
    weighted, _ = _TrainStep(model, distractor_weight=2.0)(batch)
    term = distractor_logistic(logits, masks, batch.valid, categories, batch.target_categories)
    assert term.item() > 0
    assert (weighted - plain).item() == pytest.approx(2 * term.item(), rel=1e-5)
    with pytest.raises(ConfigError, match="distractor_weight"):
        train(make_config(tmp_path, manifest, "negative", "train.distractor_weight=-1", epochs=1))


def test_unknown_model_key_is_a_config_error(tmp_path, manifest):
    with pytest.raises(ConfigError, match="did you mean 'dim'"):
        train(make_config(tmp_path, manifest, "run", "model.dimm=4", epochs=1))


def test_progress_written_to_a_file_announces_caching_and_shows_elapsed_time(tmp_path, manifest):
    from rich.console import Console

    out = io.StringIO()
    config = make_config(tmp_path, manifest, "run", "data.cache_features=true", epochs=1, progress=True)
    train(config, console=Console(file=out, width=160))
    text = out.getvalue()
    assert "caching the backbone features of" in text.splitlines()[0]  # said before the wait, not after
    # a file gets the finished bar only: elapsed and remaining time, not just a 0:00:00 remaining
    assert re.search(r"epoch 1/1 .*\d+/\d+ .* \d:\d\d:\d\d \d:\d\d:\d\d", text)


@pytest.mark.parametrize("bad", ["model.dimm=4", "data.train.0.path=missing.jsonl"])
def test_a_run_that_fails_before_training_leaves_no_run_folder(tmp_path, manifest, bad):
    config = make_config(tmp_path, manifest, "run", bad, epochs=1)
    with pytest.raises(ConfigError):
        train(config)
    assert not Path(config.train.out_dir).exists()


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
        assert item.view[1] is True
        assert item.text == mirror_text(sample.sentence) != sample.sentence
        if sample.mask is not None:
            box = item.box
            expected = np.ascontiguousarray(sample.load_mask()[:, ::-1])
            assert np.array_equal(item.mask[0].numpy() > 0.5, box.mask(expected))


def test_augmentation_depends_only_on_seed_epoch_and_index():
    samples = square_samples(6, seed=2)
    augment = load_config(None, ["data.augment.crop=1.0", "data.augment.hflip=0.5"]).data.augment
    a, b = RefDataset(samples, 32, augment, seed=7), RefDataset(samples, 32, augment, seed=7)
    a.set_epoch(3), b.set_epoch(3)
    from_a = {i: a[i].image for i in reversed(range(6))}  # access order does not matter
    assert all(torch.equal(from_a[i], b[i].image) for i in range(6))
    b.set_epoch(4)
    assert any(not torch.equal(a[i].image, b[i].image) for i in range(6))


@pytest.mark.parametrize("seed", range(20))
def test_crop_keeps_the_whole_target(seed):
    rng = np.random.default_rng(seed)
    mask = np.zeros((50, 70), dtype=bool)
    y, x = rng.integers(0, 40), rng.integers(0, 60)
    mask[y : y + 10, x : x + 10] = True
    window = crop_window(mask, (0.5, 0.9), rng)
    assert window is not None
    crop = mask[window]
    assert crop.sum() == mask.sum()
    assert 25 <= crop.shape[0] <= 45 and abs(crop.shape[1] / crop.shape[0] - 70 / 50) < 0.1
    assert crop_window(np.ones((50, 70), bool), (0.5, 0.9), rng) is None  # the target cannot fit


@pytest.mark.parametrize(
    "text, positional",
    [("the zebra on the left", True), ("second cup from the Top", True), ("the dog behind the car", True),
     ("rightmost sheep", True), ("the zebra", False), ("a bottle of leftover wine", False), ("sky", False)],
)
def test_position_words(text, positional):
    assert has_position_words(text) is positional


def test_crops_can_spare_expressions_with_position_words():
    from dataclasses import replace

    samples = square_samples(8, seed=4, size=60)
    samples = [replace(s, sentence=f"the square on the {'left' if i % 2 else 'right'}" if i < 4 else "the square")
               for i, s in enumerate(samples)]
    boxes = {}
    for spare in (False, True):
        augment = load_config(
            None, ["data.augment.crop=1.0", "data.augment.scale=[0.6, 0.8]", "data.augment.hflip=0",
                   f"data.augment.crop_positions={not spare}"]
        ).data.augment
        dataset = RefDataset(samples, 32, augment, seed=0)
        boxes[spare] = [dataset[i].box for i in range(8)]
    sizes = [s.load_image().shape[:2] for s in samples]
    cropped = {spare: [(box.orig_h, box.orig_w) != size for box, size in zip(views, sizes)]
               for spare, views in boxes.items()}
    assert all(cropped[False])  # crop probability 1 and small targets: every sample is cropped
    assert cropped[True] == [False] * 4 + [True] * 4  # ... except the four that say left or right


def test_copy_paste_makes_the_pasted_instance_the_target():
    base = square_samples(6, seed=9)
    donor = RefSample(id="donor", image=base[0].image, sentence="x", mask=base[0].mask, source="t",
                      image_id="donor", meta=SampleMeta(category="kite", image_categories=["kite"]))
    dest = [RefSample(id=s.id, image=s.image, sentence=s.sentence, mask=s.mask, source="t", image_id=s.id,
                      meta=SampleMeta(image_categories=["square"])) for s in base[1:]]
    augment = load_config(None, ["data.augment.copy_paste=1.0", "data.augment.hflip=0"]).data.augment
    dataset = RefDataset([donor, *dest], 32, augment, seed=0)
    item = dataset[1]
    assert item.text == "the kite" and item.view is None
    donor_pixels = donor.load_mask().sum()
    assert 0 < item.mask.sum() and donor_pixels > 0


def test_pair_paste_names_one_of_two_pasted_instances_by_side_or_size():
    base = square_samples(8, seed=9, size=80)
    donors = [RefSample(id=f"d{i}", image=s.image, sentence="x", mask=s.mask, source="t", image_id=f"d{i}",
                        meta=SampleMeta(category="kite", image_categories=["kite"], region_ids=[1]))
              for i, s in enumerate(base[:2])]
    dest = [RefSample(id=s.id, image=s.image, sentence=s.sentence, mask=s.mask, source="t", image_id=s.id,
                      meta=SampleMeta(image_categories=["square"])) for s in base[2:7]]
    augment = load_config(None, ["data.augment.pair_paste=1.0", "data.augment.hflip=0"]).data.augment
    dataset = RefDataset([*donors, *dest], 32, augment, seed=0, with_targets=True)
    seen = set()
    for seed in range(40):
        sample = dataset.samples[2 + seed % 5]
        pasted = dataset._paste_pair(sample, sample.load_image(), np.random.default_rng(seed))
        if pasted is None:
            continue
        image, target, text, both = pasted
        other = both & ~target
        assert "kite" in text and target.any() and other.any()
        half = image.shape[1] // 2  # the left half is columns [0, half)
        if "left" in text:
            seen.add("left")
            assert np.nonzero(target)[1].max() < half <= np.nonzero(other)[1].min()
        elif "right" in text:
            seen.add("right")
            assert np.nonzero(other)[1].max() < half <= np.nonzero(target)[1].min()
        else:
            larger = any(w in text.split() for w in ("bigger", "larger", "big", "biggest", "largest"))
            seen.add("size")
            assert target.sum() >= 1.6 * other.sum() if larger else other.sum() >= 1.6 * target.sum()
    assert seen == {"left", "right", "size"}
    item = dataset[3]  # through __getitem__: a pasted view (not cached) whose text names the kite
    assert "kite" in item.text and item.view is None and item.target.any()


def test_shaperef_specs_split_one_generation_without_shared_scenes():
    from refseg.data.sources import load_samples

    config = load_config(None, [
        "data.train.0.kind=shaperef", "data.train.0.n=60", "data.train.0.split=train", "data.train.0.options={size: 64}",
        "data.val.0.kind=shaperef", "data.val.0.n=60", "data.val.0.split=val", "data.val.0.options={size: 64}",
    ])
    train_samples, val_samples = load_samples(config, "train"), load_samples(config, "val")
    assert train_samples and val_samples and len(train_samples) + len(val_samples) < 60
    assert {s.split for s in train_samples} == {"train"} and {s.split for s in val_samples} == {"val"}
    assert not {s.image_id for s in train_samples} & {s.image_id for s in val_samples}


def test_photo_lists_split_one_spec_into_held_out_photos_and_the_rest(tmp_path):
    import json

    from refseg.data.sources import load_samples

    every = ["data.train.0.kind=shaperef", "data.train.0.n=40", "data.train.0.options={size: 64}"]
    samples = load_samples(load_config(None, every), "train")
    held_out = sorted({s.image_id for s in samples})[::3]
    listing = tmp_path / "dev.jsonl"
    listing.write_text("".join(json.dumps({"image_id": i, "sentence": "anything"}) + "\n" for i in held_out))
    rest = load_samples(load_config(None, [*every, f"data.train.0.exclude_images={listing}"]), "train")
    only = load_samples(load_config(None, [*every, f"data.train.0.only_images={listing}"]), "train")
    assert {s.image_id for s in only} == set(held_out) and not {s.image_id for s in rest} & set(held_out)
    assert sorted(s.id for s in rest + only) == sorted(s.id for s in samples)


def test_bundled_recipes_never_train_on_the_human_dev_photos():
    from refseg.data.sources import read_image_ids

    dev = REPO / "bench" / "human_dev" / "expressions.jsonl"
    assert read_image_ids(dev)
    trains_on_val = 0
    for name in ("bundled.yaml", "bundled_more_photos.yaml"):  # (bundled_levers.yaml is a lever plan)
        path = REPO / "configs" / name
        config = load_config(path)
        for spec in config.data.train:  # a source that reads a val split drops the dev photos
            if spec.split == "val":
                assert Path(spec.exclude_images) == dev, path.name
                trains_on_val += 1
    assert trains_on_val  # configs/bundled_more_photos.yaml does


def test_coco_spec_on_real_data_gives_letterboxed_samples(shared_data, tmp_path):
    from refseg.data.sources import load_samples

    config = load_config(None, [f"data.root={shared_data}", "data.train.0.kind=coco-instances",
                                "data.train.0.path=coco-instances", "data.train.0.split=val",
                                "data.train.0.limit=12"])
    samples = load_samples(config, "train")
    assert len(samples) == 12 and all(s.sentence and s.mask is not None for s in samples)
    item = RefDataset(samples, 96, with_targets=True)[0]
    assert item.image.shape == (3, 96, 96) and item.mask.shape == (1, 96, 96)
    photo = samples[0].load_image()
    assert item.target.shape == photo.shape[:2] and item.target.any()


def test_category_labels_follow_the_photo_through_flip_and_letterbox():
    from refseg.data.masks import encode_rle

    sample = square_samples(1, seed=3)[0]
    h, w = sample.image.shape[:2]
    left = np.zeros((h, w), dtype=bool)
    left[:, : w // 2] = True
    sample.meta.category_regions = [(7, encode_rle(left))]
    plain = RefDataset([sample], 32)[0].categories
    box = RefDataset([sample], 32)[0].box
    assert plain.dtype == torch.int64 and plain.shape == (32, 32)
    assert (plain[: box.inner_h, 0] == 7).all() and (plain[: box.inner_h, box.inner_w - 1] == -1).all()
    assert (plain[box.inner_h :] == -1).all()  # padding is ignored
    flip = load_config(None, ["data.augment.hflip=1.0"]).data.augment
    flipped = RefDataset([sample], 32, flip)[0].categories
    assert (flipped[: box.inner_h, 0] == -1).all() and (flipped[: box.inner_h, box.inner_w - 1] == 7).all()
    other = square_samples(2, seed=4)[1]  # no labels: filled with -1 in a mixed batch
    items = [RefDataset([sample], 32)[0], RefDataset([other], 32)[0]]
    batch = Collator(lambda texts: (torch.ones(len(texts), 1, dtype=torch.long), torch.ones(len(texts), dtype=torch.long)))(items).batch
    assert batch.categories.shape == (2, 32, 32) and (batch.categories[1] == -1).all()
    assert torch.equal(batch.categories[0], plain)
    assert batch.target_categories is None  # no sample knows its target's category


def test_target_categories_reach_the_batch_unless_pasted_over():
    samples = square_samples(2, seed=5)
    samples[0].meta.target_category = 4
    collate = Collator(lambda texts: (torch.ones(len(texts), 1, dtype=torch.long), torch.ones(len(texts), dtype=torch.long)))
    batch = collate([RefDataset(samples, 32)[i] for i in range(2)]).batch
    assert batch.target_categories.tolist() == [4, -1]


def test_feature_cache_of_a_trainable_backbone_holds_plain_tensors():
    """Evaluation may cache a fine-tuned backbone (its weights are fixed then): no autograd graph is kept."""
    from refseg.engine.feature_cache import FeatureCache
    from tests.fixtures.training import TinyEngineModel

    model = TinyEngineModel(frozen=False)
    dataset = RefDataset(square_samples(3, seed=4), 32, cached=True)
    cache = FeatureCache(torch.float32)
    cache.fill(model, dataset, torch.device("cpu"))
    view, index = dataset.views()[0]
    features = cache.features(model, 32, [view], torch.device("cpu"))
    assert not features[0].requires_grad
    expected = model.encode_image(dataset.view_image(index, view[1])[None])[0]
    torch.testing.assert_close(features[0], expected.detach())


def test_feature_cache_keys_keep_models_and_canvases_apart():
    """Two models with random frozen stems (their own features) and two canvas sizes share one cache."""
    from refseg.engine.feature_cache import FeatureCache

    cpu = torch.device("cpu")
    samples = square_samples(3, seed=4)
    small, large = RefDataset(samples, 32, cached=True), RefDataset(samples, 48, cached=True)
    a, b = TinyEngineModel(), TinyEngineModel()
    cache = FeatureCache(torch.float32)
    cache.fill(a, small, cpu)
    assert not cache.missing(a, small) and len(cache.missing(b, small)) == len(cache.missing(a, large)) == 3
    cache.fill(b, small, cpu)
    cache.fill(a, large, cpu)
    view, index = small.views()[0]
    for model, dataset in ((a, small), (b, small), (a, large)):
        expected = model.encode_image(dataset.view_image(index, view[1])[None])[0]
        torch.testing.assert_close(cache.features(model, dataset.image_size, [view], cpu)[0], expected.detach())
