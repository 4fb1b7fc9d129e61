"""``kind: coco-instances`` / ``coco-panoptic``: ``path`` = the COCO root, ``split``; expressions
synthesized on the fly (:mod:`refseg.data.sources.regions`), ``captions`` for instances."""
from __future__ import annotations

from pathlib import Path

from refseg.data.sources import register_source
from refseg.data.sources.regions import synthesized_samples


@register_source("coco-instances")
def read_coco_instances(spec, path: Path):
    from refseg.data.coco import iter_instances

    return synthesized_samples(spec, iter_instances(path, spec.split, **spec.options))


@register_source("coco-panoptic")
def read_coco_panoptic(spec, path: Path):
    from refseg.data.coco import iter_panoptic

    return synthesized_samples(spec, iter_panoptic(path, spec.split, **spec.options))
