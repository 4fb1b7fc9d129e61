"""The instance-aware model: selection rules, the model contract, checkpoints, the API's candidates,
the CLI and its staged training (on real photos when ../shared/data is there)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from refseg.models import create_model
from refseg.models.base import Batch
from refseg.models.candidate_cues import Candidates
from refseg.models.expression import label_names

SIZE = 160


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("instance_ref").eval()


def photo() -> np.ndarray:
    """Two dark blobs on a light background (something for the heads to look at)."""
    rgb = np.full((120, 200, 3), 220, dtype=np.uint8)
    rgb[30:90, 20:70] = (40, 40, 160)
    rgb[40:100, 130:180] = (160, 40, 40)
    return rgb


def canvas(rgb: np.ndarray, size: int = SIZE) -> torch.Tensor:
    from refseg.data.transforms import Letterbox, to_tensor

    return to_tensor(Letterbox(rgb.shape[0], rgb.shape[1], size).image(rgb)).unsqueeze(0)


def handmade(labels: list[str], xs: list[float], scores_valid: list[float] | None = None) -> Candidates:
    """Candidates in a row (left to right at ``xs``) with one-hot labels."""
    names = label_names()
    k = len(labels)
    rows = torch.zeros(1, k, len(names))
    for i, name in enumerate(labels):
        rows[0, i, names.index(name)] = 1.0
    boxes = torch.tensor([[[x, 10.0, x + 20.0, 60.0] for x in xs]])
    masks = torch.zeros(1, k, 8, 8)
    for i in range(k):
        masks[0, i, i % 8, :] = 1.0
    return Candidates(boxes=boxes, labels=rows, confidence=torch.ones(1, k), stuff=torch.zeros(1, k),
                      colours=torch.zeros(1, k, 11), valid=torch.tensor([scores_valid or [1.0] * k]),
                      extent=torch.tensor([[200.0, 100.0]]), masks=masks, stuff_map=torch.zeros(1, 55, 2, 2))


def chosen(model, candidates: Candidates, text: str, scores: list[float]) -> list[int]:
    tokens, lengths = model.tokenize([text])
    parsed = model.parser(tokens, lengths)
    picked = model.select(candidates, parsed, torch.tensor([scores]))
    return torch.nonzero(picked[0]).flatten().tolist()


def test_select_one_several_all_or_none(model):
    c = handmade(["zebra", "zebra", "zebra", "person"], [0, 50, 100, 150])
    scores = [3.0, 2.5, -4.0, 1.0]
    assert chosen(model, c, "zebra on the left", scores) == [0]
    assert chosen(model, c, "two zebras", scores) == [0, 1]
    assert chosen(model, c, "both zebras", [3.0, 0.5, 2.9, 5.0]) == [0, 2], "the count picks within the category"
    assert chosen(model, c, "zebras", scores) == [0, 1], "a plural takes every zebra close to the best"
    assert chosen(model, c, "the giraffe", scores) == [], "no candidate has the named category: no target"
    padded = handmade(["zebra", "zebra"], [0, 50], [1.0, 0.0])
    assert chosen(model, padded, "zebras", [1.0, 1.0]) == [0], "padding is never chosen"


def test_forward_contract_and_per_text_sharing(model):
    images = canvas(photo())
    texts = ["the blue thing on the left", "sky", "two people"]
    tokens, lengths = model.tokenize(texts)
    with torch.no_grad():
        features = model.encode_image(images)
        shared = model(Batch(images=images.expand(3, -1, -1, -1), tokens=tokens, lengths=lengths, texts=texts,
                             features=[f.expand(3, *f.shape[1:]) for f in features]))
        alone = [model(Batch(images=images, tokens=tokens[i : i + 1, : lengths[i]], lengths=lengths[i : i + 1],
                             texts=[t])) for i, t in enumerate(texts)]
    assert shared.logits.shape == (3, 1, SIZE // 2, SIZE // 2)
    for i, out in enumerate(alone):
        assert torch.allclose(shared.logits[i], out.logits[0], atol=1e-4)
        assert torch.equal(shared.extras["candidate_chosen"][i], out.extras["candidate_chosen"][0])
    k = model.config["max_things"] + model.config["max_stuff"]
    assert shared.extras["candidate_scores"].shape == (3, k)
    assert model.backbone_frozen and model.checkpoint_exclude() == ["detector."]


def test_checkpoint_round_trip_leaves_the_detector_out(model, tmp_path):
    from refseg.engine.checkpoint import load_model, read_header, save_model

    path = save_model(tmp_path / "m.safetensors", model, {"image_size": SIZE})
    assert path.stat().st_size < 5_000_000, "the detector's weights come from their package, not the file"
    assert read_header(path)["model"] == "instance_ref"
    loaded, meta = load_model(path)
    images = canvas(photo())
    tokens, lengths = model.tokenize(["the red thing"])
    batch = Batch(images=images, tokens=tokens, lengths=lengths)
    with torch.no_grad():
        assert torch.allclose(model(batch).logits, loaded.eval()(batch).logits, atol=1e-5)


def test_api_lists_candidates_best_first(model):
    from refseg.api import Segmenter

    segmenter = Segmenter(model, canvas=SIZE)
    pred = segmenter.predict(photo(), "the thing on the right")
    candidates = pred.candidates
    assert candidates, "an instance-aware prediction lists its candidates"
    scores = [c.score for c in candidates]
    assert scores == sorted(scores, reverse=True) and abs(sum(scores) - 1.0) < 1e-4
    for c in candidates:
        assert c.mask.shape == pred.mask.shape
        x1, y1, x2, y2 = c.box
        assert 0 <= x1 <= x2 <= 200 + 1 and 0 <= y1 <= y2 <= 120 + 1
    chosen_share = sum(c.score for c in candidates if c.chosen)
    assert pred.confidence == pytest.approx(chosen_share, abs=1e-4), "confidence: the chosen candidates' share"
    union = np.logical_or.reduce([c.mask for c in candidates if c.chosen] or [np.zeros_like(pred.mask)])
    assert (pred.mask & ~union).sum() <= 0.01 * pred.mask.size, "the mask is made of the chosen candidates"


def test_cue_groups_are_checked():
    from refseg.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown cue group 'smell'"):
        create_model("instance_ref", cues=["category", "smell"])


DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


@pytest.mark.skipif(not (DATA / "coco-panoptic").is_dir(), reason="needs ../shared/data (COCO panoptic)")
def test_staged_training_runs_every_stage_on_real_photos(tmp_path):
    from refseg.config import load_config
    from refseg.engine.checkpoint import read_header
    from refseg.engine.trainer import train

    config = tmp_path / "tiny.yaml"
    config.write_text(f"""
model: {{name: instance_ref}}
data:
  root: {DATA}
  image_size: {SIZE}
  train: [{{kind: coco-panoptic, path: coco-panoptic, split: train, synthesize: 4, seed: 1, limit: 12}}]
  val: [{{kind: coco-panoptic, path: coco-panoptic, split: val, synthesize: 2, seed: 2, limit: 4}}]
train: {{stages: {{masks: 3, stuff: 3, scorer: 3}}, progress: false, out_dir: {tmp_path / 'run'}}}
""")
    out = train(load_config(config))
    meta = read_header(out / "best.safetensors")["meta"]
    assert set(meta["losses"]) == {"masks", "stuff", "scorer"}
    assert np.isfinite(meta["losses"]["masks"]) and np.isfinite(meta["losses"]["stuff"])
    assert 0.0 <= meta["metrics"]["mean_iou"] <= 1.0


def test_scorer_learns_which_side_a_word_means(model):
    from copy import deepcopy

    from refseg.engine.instance_training import train_scorer

    learner = deepcopy(model)
    rng = np.random.default_rng(0)
    packs, examples = [], []
    for i in range(40):  # three zebras at random places; "left" names the leftmost, "right" the rightmost
        xs = sorted(rng.uniform(0, 180, size=3).tolist())
        packs.append(handmade(["zebra"] * 3, rng.permutation(xs).tolist()).to_list())
        order = torch.argsort(packs[-1][0][0, :, 0])
        side = ("left", 0) if i % 2 else ("right", 2)
        examples.append((i, f"the zebra on the {side[0]}", int(order[side[1]])))
    before = learner.state_dict()["word_cues.2.weight"].clone()
    train_scorer(learner, packs, examples, steps=150, lr=0.01, rng=rng, log=lambda _: None)
    assert not torch.equal(before, learner.state_dict()["word_cues.2.weight"])
    c = handmade(["zebra"] * 3, [120.0, 10.0, 60.0])
    for text, expected in (("zebra on the left", 1), ("the right zebra", 0)):
        tokens, lengths = learner.tokenize([text])
        with torch.no_grad():
            scores = learner.score(c, learner.parser(tokens, lengths))
        assert int(scores.argmax()) == expected, text


