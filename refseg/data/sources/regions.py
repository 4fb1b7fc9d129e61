"""Photos with annotated regions (COCO, CamVid) → samples with synthesized expressions.

Shared by the ``coco-instances``, ``coco-panoptic`` and ``camvid`` sources: ``synthesize``
checked expressions per photo (paper 2 §2.2) — or, with ``synthesize: 0``, one category-name
expression per category — plus caption-grounded expressions when ``captions`` is set, each
with the photo's category supervision (:mod:`refseg.data.supervision`).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from refseg.config import DatasetSpec
    from refseg.data.sample import RefSample


def synthesized_samples(spec: "DatasetSpec", images: Iterable, camvid: bool = False) -> list["RefSample"]:
    """Samples of ``images`` (:class:`~refseg.data.coco.ImageRegions`) as ``spec`` asks."""
    import numpy as np

    from refseg.data.captions import ground_captions
    from refseg.data.coco import region_sample, region_samples
    from refseg.data.supervision import category_regions, segmentation_label

    rng = np.random.default_rng(spec.seed)
    samples: list["RefSample"] = []
    for item in images:
        part = region_samples(item, spec.synthesize, rng)
        if spec.captions and item.captions:
            by_id = {r.id: r for r in item.regions}
            for k, expression in enumerate(ground_captions(item.captions, item.regions)):
                regions = [by_id[i] for i in expression.region_ids]
                part.append(region_sample(item, f"cap{k}", expression.text, regions, expression.kind))
        labelled = category_regions(((r.category_id, r.mask) for r in item.regions), camvid)
        label_of = {r.id: segmentation_label(r.category_id, camvid) for r in item.regions}
        for sample in part:
            sample.meta.category_regions = labelled  # one list shared by the photo's samples
            targets = {label_of[i] for i in sample.meta.region_ids}
            sample.meta.target_category = targets.pop() if len(targets) == 1 else -1
        samples.extend(part)
    return samples
