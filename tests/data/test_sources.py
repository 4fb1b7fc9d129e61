"""Dataset sources: a format is one module that registers itself; config kinds come from the registry."""
from __future__ import annotations

import pytest

from refseg.config import load_config
from refseg.data.sources import load_samples, source_kinds
from refseg.errors import ConfigError

PLUGIN = '''
import numpy as np

from refseg.data.sample import RefSample, SampleMeta
from refseg.data.sources import register_source


@register_source("blank-photos", path=None, needs_split=False)
def read_blank_photos(spec, path):
    return [RefSample(str(i), np.zeros((8, 8, 3), np.uint8), "nothing", None, meta=SampleMeta(kind="blank"))
            for i in range(spec.n)]
'''


def test_built_in_kinds_are_registered_by_their_modules():
    assert {"manifest", "refer", "coco-instances", "coco-panoptic", "camvid", "shaperef"} <= set(source_kinds())


def test_a_kind_typo_names_the_close_kind():
    with pytest.raises(ConfigError, match=r"data.train.0.kind must be one of .*; got 'coco-instance'; did you mean 'coco-instances'\?"):
        load_config(None, ["data.train.0.kind=coco-instance"])


def test_a_module_in_imports_adds_a_kind(tmp_path, monkeypatch):
    (tmp_path / "refseg_test_blank_source.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    config = load_config(None, ["imports=[refseg_test_blank_source]", "data.train.0.kind=blank-photos", "data.train.0.n=3"])
    samples = load_samples(config, "train")
    assert [s.id for s in samples] == ["0", "1", "2"] and samples[0].meta.kind == "blank"
    assert "blank-photos" in source_kinds()
