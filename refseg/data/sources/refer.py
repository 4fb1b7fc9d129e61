"""``kind: refer``: ``path`` = the refer root, ``dataset`` (refcoco, refcoco+, refcocog, refclef),
``split_by`` (unc, umd, google, berkeley), ``split``; ``images`` overrides the photo folder.

Samples on COCO photos (not refclef, whose categories are ReferIt's) carry the category supervision
of synthesized data: the ref's category and every annotated region of the photo (paper 2 §2.3
trains its category branch on COCO's labels of the same photos)."""
from __future__ import annotations

from pathlib import Path

from refseg.data.sources import register_source


@register_source("refer")
def read_refer(spec, path: Path):
    from refseg.data.refer import ReferDataset
    from refseg.data.supervision import category_regions, segmentation_label

    refer = ReferDataset(path, spec.dataset, spec.split_by, images=spec.images or None)
    samples = refer.samples(spec.split)
    if spec.dataset == "refclef":
        return samples
    regions: dict[int, list[tuple[int, dict]]] = {}
    for sample in samples:
        image_id = int(sample.image_id)
        if image_id not in regions:
            regions[image_id] = category_regions(refer.image_regions(image_id))
        sample.meta.category_regions = regions[image_id]  # one list shared by the photo's samples
        sample.meta.target_category = segmentation_label(sample.meta.category_id)
    return samples
