"""bench.instance_model: the failure step each human-dev expression is sorted into."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from bench.human_dev.build import HumanDevItem
from bench.instance_model import failure_step
from refseg.api import Candidate
from refseg.data.sample import RefSample, SampleMeta


def box_mask(x1: int, y1: int, x2: int, y2: int, shape=(40, 60)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[y1:y2, x1:x2] = True
    return mask


TARGET = (5, 5, 25, 30)  # x1, y1, x2, y2 of the target zebra
OTHER = (35, 5, 55, 30)  # the other zebra


def item(kind: str = "disambiguate") -> HumanDevItem:
    sample = RefSample(id="x", image=np.zeros((40, 60, 3), np.uint8), sentence="zebra on the left",
                       mask=box_mask(*TARGET), meta=SampleMeta(kind=kind, extra={"categories": ["zebra"]}))
    return HumanDevItem(sample, regions=[], target_ids=[1])


def candidate(box, label="zebra", chosen=False, mask=None) -> Candidate:
    return Candidate(box=tuple(float(v) for v in box), label=label, score=0.5, chosen=chosen,
                     mask=box_mask(*box) if mask is None else mask)


def prediction(mask: np.ndarray, candidates: list[Candidate]):
    return SimpleNamespace(mask=mask, candidates=candidates)


@pytest.mark.parametrize(
    "kind, pred, step",
    [
        ("disambiguate", prediction(box_mask(*TARGET), [candidate(TARGET, chosen=True)]), None),
        ("disambiguate", prediction(box_mask(*OTHER), [candidate(OTHER, chosen=True)]), "detector missed"),
        ("disambiguate", prediction(box_mask(*OTHER), [candidate(TARGET, mask=box_mask(5, 5, 8, 8)),
                                                        candidate(OTHER, chosen=True)]), "mask poor"),
        ("disambiguate", prediction(box_mask(*OTHER), [candidate(TARGET), candidate(OTHER, chosen=True)]),
         "wrong instance"),
        ("disambiguate", prediction(box_mask(*OTHER), [candidate(TARGET),
                                                        candidate(OTHER, label="horse", chosen=True)]),
         "wrong category"),
        ("stuff", prediction(box_mask(*OTHER), []), "stuff"),
        ("set", prediction(box_mask(*OTHER), []), "set"),
    ],
)
def test_failure_step_names_the_step_that_failed(kind, pred, step):
    assert failure_step(item(kind), pred) == step
