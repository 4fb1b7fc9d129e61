"""The bundled model on onnxruntime: ``refseg export onnx -m default`` writes one graph per network,
and ``runtime="onnx"`` (graphs + the model's glue) gives the masks, candidates and metrics of torch."""
from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from refseg.api import Segmenter
from refseg.cli import main
from refseg.engine.checkpoint import WEIGHTS_DIR
from refseg.errors import ConfigError
from refseg.export.instance_onnx import networks
from refseg.export.onnx import PROBABILITY_TOLERANCE, export_onnx, read_metadata
from refseg.models.detector import graph_path
from refseg.runtime.onnx_networks import GRAPHS, NetworksRunner
from refseg.samples import SAMPLES

onnx = pytest.importorskip("onnx", reason="extra 'onnx' not installed")
pytest.importorskip("onnxruntime", reason="extra 'onnx' not installed")
try:
    graph_path()
except ConfigError as err:
    pytest.skip(str(err), allow_module_level=True)

PHOTOS = [s for s in SAMPLES if s.name in ("coffee", "chelsea")]  # not the photo the export verifies on


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, str]:
    """``refseg export onnx -m default`` into a folder next to a copy of the bundled checkpoint (where
    ``runtime="onnx"`` looks first), and what the command printed."""
    folder = tmp_path_factory.mktemp("weights")
    checkpoint = shutil.copy(WEIGHTS_DIR / "default.safetensors", folder / "default.safetensors")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["export", "onnx", "-m", "default", "-o", str(folder / "default.onnx")])
    return Path(checkpoint), out.getvalue()


@pytest.fixture(autouse=True)
def onnx_cache(tmp_path: Path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("REFSEG_CACHE", str(cache))
    return cache


def test_cli_export_writes_one_graph_per_network(exported: tuple[Path, str]) -> None:
    checkpoint, printed = exported
    folder = checkpoint.with_suffix(".onnx")
    assert printed.startswith(f"{folder}: instance_ref, 320px, graphs detector, stuff_head, mask_head, scorer, ")
    assert "any number of texts, words any length" in printed and printed.count("\n") == 1
    assert float(printed.split("max |probability - torch| ")[1].split(",")[0]) <= PROBABILITY_TOLERANCE
    for network in networks(320):
        graph = onnx.load(str(folder / f"{network.name}.onnx"), load_external_data=False)
        assert [i.name for i in graph.graph.input] == list(network.inputs)
        assert [o.name for o in graph.graph.output] == list(network.outputs)
        assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 16  # GridSample
        props = read_metadata(folder / f"{network.name}.onnx")
        assert props["graph"] == network.name and json.loads(props["graphs"]) == list(GRAPHS)
        assert props["refseg_model"] == "instance_ref" and props["image_size"] == "320"
        assert len(props["checkpoint_sha256"]) == 64


def test_onnx_runtime_gives_the_masks_and_candidates_of_torch(exported: tuple[Path, str], onnx_cache: Path) -> None:
    checkpoint, _ = exported
    torch_seg = Segmenter.from_pretrained(checkpoint)
    onnx_seg = Segmenter.from_pretrained(checkpoint, runtime="onnx")
    assert isinstance(onnx_seg.runner, NetworksRunner) and not onnx_cache.exists()  # the sibling folder was used
    for sample in PHOTOS:
        rgb = sample.load()
        texts = [*sample.expressions, "the sky", "two cups"]
        for a, b in zip(torch_seg.predict(rgb, texts), onnx_seg.predict(rgb, texts)):
            assert np.abs(a.prob - b.prob).max() <= PROBABILITY_TOLERANCE, (sample.name, a.text)
            assert np.array_equal(a.mask, b.mask) and a.confidence == pytest.approx(b.confidence, abs=1e-4)
            assert [(c.label, c.chosen) for c in a.candidates] == [(c.label, c.chosen) for c in b.candidates]
            for x, y in zip(a.candidates, b.candidates):
                assert x.box == pytest.approx(y.box, abs=0.2) and x.score == pytest.approx(y.score, abs=1e-4)


def test_eval_with_the_onnx_runtime_equals_torch(exported: tuple[Path, str], tmp_path: Path) -> None:
    from refseg.data.manifest import write_manifest
    from refseg.data.sample import RefSample

    checkpoint, _ = exported
    rng = np.random.default_rng(0)
    samples = [
        RefSample(id=f"{s.name}{i}", image=s.load(), sentence=text, split="val", image_id=s.name,
                  mask=rng.random(s.load().shape[:2]) < 0.3)
        for s in PHOTOS for i, text in enumerate(s.expressions[:2])
    ]
    manifest = write_manifest(samples, tmp_path / "data")
    for runtime in ("torch", "onnx"):
        main(["eval", "--data", str(manifest), "--model", str(checkpoint), "--runtime", runtime, "--batch-size", "4",
              "--save-pred", str(tmp_path / runtime), "--json", str(tmp_path / f"{runtime}.json")])
    for png in sorted((tmp_path / "torch").glob("*.png")):
        assert np.array_equal(np.asarray(Image.open(png)), np.asarray(Image.open(tmp_path / "onnx" / png.name)))
    metrics = [json.loads((tmp_path / f"{r}.json").read_text()) for r in ("torch", "onnx")]
    assert metrics[0] == metrics[1] and metrics[0]["n"] == 4


def test_export_into_a_file_is_a_one_line_error(exported: tuple[Path, str], tmp_path: Path) -> None:
    checkpoint, _ = exported
    taken = tmp_path / "default.onnx"
    taken.write_bytes(b"not a folder")
    with pytest.raises(ConfigError, match="exports a folder of graphs") as refused:
        export_onnx(Segmenter.from_pretrained(checkpoint).model, taken, image_size=320)
    assert "\n" not in str(refused.value) and taken.read_bytes() == b"not a folder"
