"""``kind: camvid``: ``path`` = the CamVid (SegNet release) root, ``split``; expressions synthesized
on the fly (:mod:`refseg.data.sources.regions`), labels in CamVid's classes."""
from __future__ import annotations

from pathlib import Path

from refseg.data.sources import register_source
from refseg.data.sources.regions import synthesized_samples


@register_source("camvid")
def read_camvid(spec, path: Path):
    from refseg.data.camvid import iter_camvid

    return synthesized_samples(spec, iter_camvid(path, spec.split, **spec.options), camvid=True)
