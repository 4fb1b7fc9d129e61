"""``kind: manifest``: ``path`` = a JSONL manifest (docs/datasets.md); ``split`` selects one split."""
from __future__ import annotations

from pathlib import Path

from refseg.data.sources import register_source


@register_source("manifest", path="file", needs_split=False)
def read_manifest_spec(spec, path: Path):
    from refseg.data.manifest import read_manifest

    return read_manifest(path, split=spec.split or None)
