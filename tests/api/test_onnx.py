"""ONNX export and the onnxruntime runtime: the layout chosen by verification (dynamic texts and
words, words padded to the cap, one text per call), metadata, ``runtime="onnx"`` through
:class:`Segmenter` (sibling file and cache), ``refseg export onnx``, and parity with PyTorch for
every registered model on the sample photos (marked slow)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from refseg.api import Segmenter
from refseg.cli import main
from refseg.data.transforms import Letterbox, to_tensor
from refseg.engine.checkpoint import save_model
from refseg.errors import ConfigError
from refseg.export.onnx import (
    PROBABILITY_TOLERANCE,
    TOLERANCE,
    default_onnx_path,
    export_checkpoint,
    export_onnx,
    read_metadata,
)
from refseg.models.base import Batch, ModelOutput, RefSegModel, create_model, list_models, model_class, register
from refseg.models.text import encode
from refseg.runtime.onnx_runner import Layout, OnnxRunner
from refseg.samples import SAMPLES
from tests.fixtures.red_model import RedModel

pytest.importorskip("onnxruntime", reason="extra 'onnx' not installed")

VOCAB = ["the", "man", "on", "left", "red", "dog", "a", "small", "white"]


class WordLoopModel(RefSegModel):
    """Tiny exportable model: conv image features gated by a sentence vector.

    ``recurrence="lstm"`` runs nn.LSTM (traces with any T); ``"loop"`` walks the words in a Python
    loop (unrolled by the tracer: T must be padded to the cap); ``"loop_fixed_batch"`` also
    builds its state from ``batch.size`` (a Python int: the batch size is frozen too).
    """

    def __init__(self, recurrence: str = "lstm", max_len: int = 7) -> None:
        super().__init__(recurrence=recurrence, max_len=max_len)
        self.recurrence, self.max_len = recurrence, max_len
        self.conv = nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.embed = nn.Embedding(len(VOCAB) + 2, 8)
        self.lstm = nn.LSTM(8, 8, batch_first=True)
        self.head = nn.Conv2d(8, 1, 1)

    def tokenize(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        return encode(texts, lambda w: 2 + VOCAB.index(w) if w in VOCAB else 1, self.max_len)

    def encode_image(self, images: Tensor) -> list[Tensor]:
        return [self.conv(images)]

    def forward(self, batch: Batch) -> ModelOutput:
        emb = self.embed(batch.tokens)
        if self.recurrence == "lstm":
            states, _ = self.lstm(emb)
            sentence = states.gather(1, (batch.lengths - 1).view(-1, 1, 1).expand(-1, 1, 8)).squeeze(1)
        else:
            rows = batch.size if self.recurrence == "loop_fixed_batch" else emb.shape[0]
            sentence = torch.zeros(rows, 8)
            for t in range(batch.tokens.shape[1]):
                keep = (t < batch.lengths).float().unsqueeze(1)
                sentence = keep * torch.tanh(sentence + emb[:, t]) + (1 - keep) * sentence
        fused = batch.features[0] * sentence[:, :, None, None]
        word_maps = fused[:, :1] * emb.mean(-1)[:, :, None, None]
        return ModelOutput(self.head(fused), extras={"word_maps": word_maps})


if "_test_words" not in list_models():
    register("_test_words")(WordLoopModel)


@pytest.fixture(autouse=True)
def onnx_cache(tmp_path: Path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("REFSEG_CACHE", str(cache))
    return cache


def _photo(h: int = 45, w: int = 70) -> np.ndarray:
    return (np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8)


@pytest.mark.parametrize(
    "recurrence, layout",
    [
        ("lstm", Layout(dynamic_batch=True, dynamic_words=True)),
        ("loop", Layout(dynamic_batch=True, dynamic_words=False)),
        ("loop_fixed_batch", Layout(dynamic_batch=False, dynamic_words=False)),
    ],
)
def test_export_keeps_the_most_dynamic_layout_that_verifies(tmp_path: Path, recurrence: str, layout: Layout) -> None:
    torch.manual_seed(0)
    model = WordLoopModel(recurrence).eval()
    result = export_onnx(model, tmp_path / "m.onnx", image_size=64)
    assert result.layout == layout and result.max_tokens == 7
    assert result.outputs == ("logits", "word_maps")
    assert result.max_probability_diff <= PROBABILITY_TOLERANCE and result.max_extras_diff <= TOLERANCE

    runner = OnnxRunner.from_file(result.path)
    image = to_tensor(Letterbox(45, 70, 64).image(_photo())).unsqueeze(0)
    texts = ["the man", "a small white dog on the left", "red"]
    tokens, lengths = model.tokenize(texts)
    with torch.inference_mode():
        want = model(Batch(images=None, tokens=tokens, lengths=lengths, features=[f.expand(3, -1, -1, -1) for f in model.encode_image(image)]))
    got = runner.run(runner.encode_image(image), tokens, lengths, texts)
    assert (got.logits.sigmoid() - want.logits.sigmoid()).abs().max() <= PROBABILITY_TOLERANCE
    t = tokens.shape[1]
    assert (got.extras["word_maps"][:, :t] - want.extras["word_maps"]).abs().max() <= TOLERANCE


@pytest.mark.parametrize("bias, exports", [(-20.0, True), (0.0, False)])
def test_verification_compares_probabilities_not_log_odds(tmp_path: Path, monkeypatch, bias: float, exports: bool) -> None:
    """A logit error of 0.05 where p is about 1e-9 changes no mask or heatmap: the export keeps the
    graph. The same error near p = 0.5 is refused."""
    import dataclasses

    import refseg.export.onnx as onnx_export

    torch.manual_seed(0)
    model = WordLoopModel("lstm").eval()
    nn.init.constant_(model.head.bias, bias)
    exact = onnx_export.torch_references

    def off_by_a_twentieth(*args):
        return [(t, k, n, dataclasses.replace(out, logits=out.logits + 0.05)) for t, k, n, out in exact(*args)]

    monkeypatch.setattr(onnx_export, "torch_references", off_by_a_twentieth)
    if exports:
        assert export_onnx(model, tmp_path / "m.onnx", image_size=64).max_probability_diff < 1e-8
    else:
        with pytest.raises(ConfigError, match=r"max \|probability difference\| 1\.\d+e-02 \(at most 0.00025\)"):
            export_onnx(model, tmp_path / "m.onnx", image_size=64)


@pytest.mark.parametrize("scale, exports", [(1e4, True), (1.0, False)])
def test_verification_scales_other_outputs_by_their_size(tmp_path: Path, monkeypatch, scale: float, exports: bool) -> None:
    """Word maps off by 5e-4 of their value plus 5e-3 / scale: at values of thousands that is float32
    rounding (kept, though the absolute error is far over the tolerance); at values about 1, an
    error of 5e-3 is refused."""
    import dataclasses

    import refseg.export.onnx as onnx_export

    torch.manual_seed(0)
    model = WordLoopModel("lstm").eval()
    with torch.no_grad():
        model.conv.weight.mul_(scale)
    exact = onnx_export.torch_references
    largest = []

    def off(*args):
        references = exact(*args)
        largest.extend(float(out.extras["word_maps"].abs().max()) for *_, out in references)
        return [
            (t, k, n, dataclasses.replace(out, extras={"word_maps": out.extras["word_maps"] * (1 + 5e-4) + 5e-3 / scale}))
            for t, k, n, out in references
        ]

    monkeypatch.setattr(onnx_export, "torch_references", off)
    if exports:
        assert export_onnx(model, tmp_path / "m.onnx", image_size=64).max_extras_diff <= TOLERANCE
        assert max(largest) * 5e-4 > 10 * TOLERANCE  # compared as they are, they would be refused
    else:
        with pytest.raises(ConfigError, match=r"other outputs [45]\.\d+e-03 \(at most 0.001\)"):
            export_onnx(model, tmp_path / "m.onnx", image_size=64)


def test_metadata_describes_model_tokenizer_and_layout(tmp_path: Path) -> None:
    model = WordLoopModel("loop", max_len=5)
    checkpoint = save_model(tmp_path / "words.safetensors", model, {"image_size": 64, "note": "test"})
    export_checkpoint(model, checkpoint, tmp_path / "words.onnx", image_size=64)
    props = read_metadata(tmp_path / "words.onnx")
    assert props["refseg_model"] == "_test_words"
    assert json.loads(props["refseg_config"]) == {"recurrence": "loop", "max_len": 5}
    assert props["image_size"] == "64"
    assert json.loads(props["tokenizer"])["max_tokens"] == 5
    assert json.loads(props["dynamic_words"]) is False
    assert json.loads(props["refseg_meta"])["note"] == "test"
    assert len(props["checkpoint_sha256"]) == 64
    import onnx

    tokens_input = onnx.load(str(tmp_path / "words.onnx")).graph.input[1]
    assert tokens_input.type.tensor_type.shape.dim[1].dim_value == 5  # the word axis is fixed to the cap


def test_unexportable_model_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be exported to ONNX"):
        export_onnx(RedModel(), tmp_path / "red.onnx", image_size=32)  # draws from a torch.Generator


def test_segmenter_onnx_runtime_matches_torch_and_uses_the_cache(tmp_path: Path, onnx_cache: Path) -> None:
    torch.manual_seed(1)
    checkpoint = save_model(tmp_path / "words.safetensors", WordLoopModel("lstm"), {"image_size": 64})
    torch_seg = Segmenter.from_pretrained(checkpoint)
    onnx_seg = Segmenter.from_pretrained(checkpoint, runtime="onnx")
    assert isinstance(onnx_seg.runner, OnnxRunner)
    assert len(list(onnx_cache.glob("onnx/*.onnx"))) == 1  # exported once into the cache
    texts = ["the red dog", "a man on the left"]
    for a, b in zip(torch_seg.predict(_photo(), texts), onnx_seg.predict(_photo(), texts)):
        assert a.mask.shape == b.mask.shape == (45, 70)
        assert np.abs(a.prob - b.prob).max() < 1e-4
        assert np.array_equal(a.mask, b.mask)
        assert a.extras["word_maps"].shape == b.extras["word_maps"].shape


def _photo_manifest(folder: Path) -> Path:
    """Three photos, two expressions each, with random target masks: a manifest for `refseg eval`."""
    from refseg.data.manifest import write_manifest
    from refseg.data.sample import RefSample

    rng = np.random.default_rng(3)
    samples = []
    for p in range(3):
        photo = _photo(40 + 7 * p, 70 - 9 * p)
        for t, text in enumerate(["the red dog", "a small white man on the left"]):
            mask = rng.random(photo.shape[:2]) < 0.3
            samples.append(RefSample(id=f"p{p}t{t}", image=photo, sentence=text, mask=mask, split="val", image_id=str(p)))
    return write_manifest(samples, folder)


def test_cli_eval_runs_the_onnx_runtime(tmp_path: Path, onnx_cache: Path, capsys) -> None:
    """`refseg eval --runtime onnx`: the masks of `--runtime torch`, and the same metrics."""
    torch.manual_seed(1)
    checkpoint = save_model(tmp_path / "words.safetensors", WordLoopModel("lstm"), {"image_size": 64})
    manifest = _photo_manifest(tmp_path / "data")
    for runtime in ("torch", "onnx"):
        main(["eval", "--data", str(manifest), "--model", str(checkpoint), "--runtime", runtime, "--batch-size", "4",
              "--save-pred", str(tmp_path / runtime), "--json", str(tmp_path / f"{runtime}.json")])
    capsys.readouterr()
    for png in sorted((tmp_path / "torch").glob("*.png")):
        assert np.array_equal(np.asarray(Image.open(png)), np.asarray(Image.open(tmp_path / "onnx" / png.name)))
    metrics = [json.loads((tmp_path / f"{r}.json").read_text()) for r in ("torch", "onnx")]
    assert metrics[0] == metrics[1] and metrics[0]["n"] == 6


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--runtime", "tensorflow"], "error: unknown runtime 'tensorflow'; choose one of: onnx, torch"),
    ],
)
def test_cli_eval_runtime_errors_are_one_line(tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    manifest = _photo_manifest(tmp_path / "data")
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--data", str(manifest), *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


def test_cli_export_writes_the_sibling_file_that_the_onnx_runtime_uses(tmp_path: Path, onnx_cache: Path, capsys) -> None:
    checkpoint = save_model(tmp_path / "words.safetensors", WordLoopModel("loop"), {"image_size": 64})
    main(["export", "onnx", "--model", str(checkpoint), "--opset", "17"])
    out = capsys.readouterr().out
    assert str(default_onnx_path(checkpoint)) in out and "padded to 7 tokens" in out
    assert default_onnx_path(checkpoint).is_file()
    Segmenter.from_pretrained(checkpoint, runtime="onnx")
    assert not onnx_cache.exists()  # the sibling file was used: nothing exported again


def test_cli_export_bad_model_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "onnx", "--model", str(tmp_path / "missing.safetensors")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1


PARITY_SIZE = 160
PARITY_MODELS = [name for name in list_models() if not name.startswith("_") and not model_class(name).onnx_unsupported]


@pytest.mark.slow
@pytest.mark.parametrize("name", PARITY_MODELS)
def test_parity_with_torch_on_the_sample_photos(tmp_path: Path, name: str) -> None:
    """max |Δprobability| <= 2.5e-4 on the canvas, and the same masks at the photo's size."""
    torch.manual_seed(0)
    checkpoint = save_model(tmp_path / f"{name}.safetensors", create_model(name), {"image_size": PARITY_SIZE})
    torch_seg = Segmenter.from_pretrained(checkpoint)
    onnx_seg = Segmenter.from_pretrained(checkpoint, runtime="onnx")
    for sample in SAMPLES:
        rgb = sample.load()
        texts = list(sample.expressions)
        image = to_tensor(Letterbox(*rgb.shape[:2], PARITY_SIZE).image(rgb)).unsqueeze(0)
        tokens, lengths = torch_seg.model.tokenize(texts)
        want = torch_seg.runner.run(torch_seg.runner.encode_image(image), tokens, lengths, texts).logits
        got = onnx_seg.runner.run(onnx_seg.runner.encode_image(image), tokens, lengths, texts).logits
        assert float((got.sigmoid() - want.sigmoid()).abs().max()) <= PROBABILITY_TOLERANCE, sample.name
        for a, b in zip(torch_seg.predict(rgb, texts), onnx_seg.predict(rgb, texts)):
            differ = a.mask != b.mask
            # a pixel may only flip where the probability is within the tolerance of the threshold
            assert not differ.any() or np.abs(a.prob[differ] - 0.5).max() <= PROBABILITY_TOLERANCE, sample.name
