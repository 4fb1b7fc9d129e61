"""``kind: shaperef``: ``n`` generated ShapeRef samples with ``seed`` (in memory); ``split`` selects
train/val/test; ``options`` go to :func:`refseg.data.shapes.generate_samples`."""
from __future__ import annotations

from refseg.data.sources import register_source


def _check(spec) -> str | None:
    return "n must be > 0 for a shaperef dataset" if spec.n <= 0 else None


@register_source("shaperef", path=None, needs_split=False, check=_check)
def read_shaperef(spec, path: None):
    from refseg.data.shapes import generate_samples

    samples = generate_samples(spec.n, spec.seed, **spec.options)
    return [s for s in samples if not spec.split or s.split in (None, spec.split)]
