"""The parts of the instance-aware model that need no detector: expression parsing, RoIAlign,
mask pasting and the cue features."""
from __future__ import annotations

import pytest
import torch

from refseg.models.candidate_cues import CUE_NAMES, Candidates, cue_features
from refseg.models.expression import ExpressionParser, label_names
from refseg.models.instance_heads import MaskHead, StuffHead, roi_align
from refseg.models.text import encode, glove_index, UNK_ID


@pytest.fixture(scope="module")
def parser() -> ExpressionParser:
    return ExpressionParser()


def parse(parser: ExpressionParser, texts: list[str]):
    index = glove_index()
    tokens, lengths = encode(texts, lambda w: index[w] + 2 if w in index else UNK_ID)
    return parser(tokens, lengths)


def top_label(distribution: torch.Tensor) -> str | None:
    return label_names()[int(distribution.argmax())] if distribution.sum() > 0 else None


@pytest.mark.parametrize(
    "text, subject, obj, count",
    [
        ("big zebra on the left", "zebra", None, 1),
        ("guy in blue next to the sofa", "person", "couch", 1),
        ("both surfers", "person", None, 2),
        ("two men on the right", "person", None, 2),
        ("people", "person", None, 0),
        ("all the sheep", "sheep", None, 0),
        ("the traffic light above the car", "traffic light", "car", 1),
        ("sky", "sky", None, 1),
        ("the cup on the table", "cup", "table", 1),
        ("lady holding a telly", "person", None, 1),
    ],
)
def test_parser_finds_subject_object_and_count(parser, text, subject, obj, count):
    parsed = parse(parser, [text])
    assert top_label(parsed.subject[0]) == subject
    assert top_label(parsed.object[0]) == obj
    assert int(parsed.count[0]) == count
    assert bool(parsed.named[0])


def test_a_word_names_every_label_it_is_true_of(parser):
    parsed = parse(parser, ["the wall", "the wood floor", "wooden floor"])
    names = label_names()
    walls = {names[i] for i in torch.nonzero(parsed.subject[0]).flatten().tolist()}
    assert {"wall", "brick wall", "stone wall"} <= walls
    floors = {names[i] for i in torch.nonzero(parsed.subject[1]).flatten().tolist()}
    assert floors == {"wood floor"}, "a two-word name beats its head word"
    floors = {names[i] for i in torch.nonzero(parsed.subject[2]).flatten().tolist()}
    assert floors == {"floor", "wood floor"}
    assert torch.allclose(parsed.subject.sum(-1), torch.ones(3))
    ground = parse(parser, ["red dirt on the ground"]).object[0]
    assert {"dirt", "gravel", "sand"} <= {names[i] for i in torch.nonzero(ground).flatten().tolist()}


def test_no_category_word_falls_back_on_glove_similarity(parser):
    parsed = parse(parser, ["the hound", "zzqx"])
    assert not parsed.named.any()
    assert top_label(parsed.subject[0]) == "dog"
    assert torch.allclose(parsed.subject.sum(-1), torch.ones(2), atol=1e-5)


def test_roi_align_averages_the_box():
    # a feature map whose value is the x coordinate of each pixel centre, at stride 4
    xs = (torch.arange(16).float() + 0.5) * 4
    features = xs.view(1, 1, 1, 16).expand(1, 1, 16, 16).contiguous()
    boxes = torch.tensor([[8.0, 8.0, 40.0, 24.0]])
    pooled = roi_align(features, boxes, torch.tensor([0]), output_size=4, stride=4)
    assert pooled.shape == (1, 1, 4, 4)
    expected = 8 + (torch.arange(4).float() + 0.5) * 8  # bin centres along x
    assert torch.allclose(pooled[0, 0, 0], expected, atol=1e-4)
    assert torch.allclose(pooled[0, 0, :, 1], pooled[0, 0, 0, 1].expand(4))


def test_heads_have_the_documented_shapes():
    taps = [torch.randn(2, 32, 40, 40), torch.randn(2, 96, 20, 20), torch.randn(2, 64, 10, 10)]
    head = MaskHead([32, 96], [8, 16], width=16)
    boxes = torch.tensor([[10.0, 20.0, 100.0, 200.0], [0.0, 0.0, 320.0, 320.0], [50.0, 50.0, 60.0, 55.0]])
    assert head(taps[:2], boxes, torch.tensor([0, 1, 1])).shape == (3, 1, 28, 28)
    stuff = StuffHead([32, 96, 64], 7, width=16)
    assert stuff(taps).shape == (2, 7, 40, 40)


def test_paste_masks_fills_the_box_only():
    from refseg.models.instance_ref import paste_masks

    pasted = paste_masks(torch.ones(1, 28, 28), torch.tensor([[64.0, 32.0, 192.0, 96.0]]), size=256, grid=64)
    inside = pasted[0, 8:24, 16:48]  # the box on the 4-pixel grid
    assert inside.min() > 0.9 and inside[1:-1, 1:-1].min() > 0.99  # bilinear edges fade a little
    assert pasted[0].sum() == pytest.approx(inside.sum().item(), rel=0.05)


def candidates(boxes: list[list[float]], labels: list[str], colours: list[int] | None = None) -> Candidates:
    names = label_names()
    k = len(boxes)
    label_rows = torch.zeros(1, k, len(names))
    for i, name in enumerate(labels):
        label_rows[0, i, names.index(name)] = 1.0
    colour_rows = torch.zeros(1, k, 11)
    for i, c in enumerate(colours or []):
        colour_rows[0, i, c] = 1.0
    return Candidates(
        boxes=torch.tensor([boxes]), labels=label_rows, confidence=torch.ones(1, k), stuff=torch.zeros(1, k),
        colours=colour_rows, valid=torch.ones(1, k), extent=torch.tensor([[300.0, 200.0]]),
        masks=torch.zeros(1, k, 4, 4), stuff_map=torch.zeros(1, 55, 2, 2),
    )


def test_cue_features_rank_candidates_within_the_named_category(parser):
    # three zebras left to right (the middle one smallest) and a person further left
    c = candidates([[100, 50, 150, 150], [160, 80, 190, 120], [200, 50, 290, 190], [0, 0, 40, 190]],
                   ["zebra", "zebra", "zebra", "person"])
    features = cue_features(c, parse(parser, ["zebra"]))[0]
    column = {name: features[:, i] for i, name in enumerate(CUE_NAMES)}
    assert column["left_rank"][:3].tolist() == pytest.approx([0.0, 0.5, 1.0], abs=1e-4)
    assert column["second_left"][1] == pytest.approx(1.0) and column["second_left"][0] < 0.1
    assert column["size_rank"][:3].tolist() == pytest.approx([0.5, 0.0, 1.0], abs=1e-4)
    assert column["category"][3] < column["category"][0]
    assert column["x"][0] == pytest.approx(125 / 300)


def test_relation_cues_look_at_the_object_category(parser):
    # two people; a dog right of the second
    c = candidates([[0, 0, 50, 100], [200, 0, 250, 100], [260, 50, 290, 100]], ["person", "person", "dog"])
    features = cue_features(c, parse(parser, ["man next to the dog"]))[0]
    near = features[:, CUE_NAMES.index("rel_near")]
    assert near[1] > near[0]
    right = features[:, CUE_NAMES.index("rel_left")]  # the candidate is left of the object
    assert right[1] > 0 and right[0] < right[1]
    alone = cue_features(c, parse(parser, ["man on the left"]))[0]
    assert alone[:, CUE_NAMES.index("related")].abs().sum() == 0


def test_parser_reads_colours_and_the_noun_of_a_compound(parser):
    from refseg.vocabulary import COLOUR_NAMES

    parsed = parse(parser, ["orange cat on the left", "baby giraffe", "bus driver", "grey and white bus"])
    assert [top_label(s) for s in parsed.subject] == ["cat", "giraffe", "person", "bus"]
    colours = {COLOUR_NAMES[i]: float(v) for i, v in enumerate(parsed.colours[3]) if v > 0}
    assert colours == {"gray": 0.5, "white": 0.5}
    assert parsed.colours[0, COLOUR_NAMES.index("orange")] == 1.0
    assert parsed.colours[1].sum() == 0


def test_colour_cues_compare_a_candidate_with_its_peers(parser):
    from refseg.vocabulary import COLOUR_NAMES

    red, white = COLOUR_NAMES.index("red"), COLOUR_NAMES.index("white")
    c = candidates([[0, 0, 50, 100], [60, 0, 110, 100], [120, 0, 170, 100]], ["bus"] * 3, [white, red, white])
    features = cue_features(c, parse(parser, ["the red bus"]))[0]
    match, contrast = features[:, CUE_NAMES.index("colour_match")], features[:, CUE_NAMES.index("colour_contrast")]
    assert match.tolist() == pytest.approx([0.0, 1.0, 0.0])
    assert contrast[1] == pytest.approx(1.0) and contrast[0] == pytest.approx(-0.5)
