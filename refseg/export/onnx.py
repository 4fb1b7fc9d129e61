"""ONNX export of a refseg model (run by :mod:`refseg.runtime.onnx_runner`, ``runtime="onnx"``).

The exported graph takes the letterboxed, normalised photo ``image`` [1, 3, S, S], token ids
``tokens`` [B, T] (int64, 0 = padding) and ``lengths`` [B] (int64) and returns ``logits``
[B, 1, h, w] on the canvas grid, plus the model's per-expression extras (``word_maps``,
``word_attention``) when it has them. The image is encoded once and its features broadcast
to the B expressions inside the graph. Tokenisation stays in Python (``model.tokenize``), and
post-processing is the shared :mod:`refseg.postprocess.masks`, so both runtimes give the same
masks.

Export uses PyTorch's TorchScript-based exporter (no extra dependency). Tracing freezes Python
control flow, so each export is *verified* against PyTorch with onnxruntime on other batch
sizes and sentence lengths; the first layout that matches is kept:

1. dynamic B and T;
2. dynamic B, T padded to the model's token cap (models that loop over words in Python:
   the same trace, with the word axis then fixed to the cap);
3. B = 1 (the runner sends one expression at a time), T padded to the cap (a second trace).

The chosen layout, the model name and config, the checkpoint metadata, the tokenizer cap and
the image size are stored in the ONNX ``metadata_props``.

The bundled ``instance_ref`` exports instead as a folder of four graphs, one per network, run with
the model's own Python glue (:mod:`refseg.export.instance_onnx`).
"""
from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from refseg.errors import CheckpointError, ConfigError
from refseg.extras import require
from refseg.io import atomic_write_bytes, file_sha256
from refseg.models.base import ModelOutput, RefSegModel
from refseg.runtime.base import Runner, broadcast_batch
from refseg.runtime.onnx_runner import Layout, OnnxRunner, onnx_session, pad_tokens

DEFAULT_OPSET = 17
#: Largest |difference| between onnxruntime and PyTorch accepted by the export check, for the
#: probabilities made from the logits output (what masks and heatmaps are made of): 1e-3 in logit
#: at the decision boundary p = 0.5, where dp/dlogit = 1/4. Logits themselves are not compared:
#: where p is near 0 the log-odds of a fused probability (``lstm_cnn_plus``) turn float32 rounding
#: into differences of 1e-2 that change p by 1e-7.
PROBABILITY_TOLERANCE = 2.5e-4
#: ... and for the other outputs (word maps, attention, low-resolution and category logits), as
#: |difference| / (1 + |value|): absolute below 1, relative above, since float32 rounding grows with
#: the value (the bundled model's logit extras reach 12 and differ by 4e-3).
TOLERANCE = 1e-3
INPUTS = ("image", "tokens", "lengths")
PROBE_TEXTS = ("the man on the left", "red", "a small white dog next to the large brown chair on the right")


LAYOUTS = (Layout(True, True), Layout(True, False), Layout(False, False))


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_onnx` wrote."""

    path: Path
    layout: Layout
    max_tokens: int
    outputs: tuple[str, ...]
    max_probability_diff: float  # largest |difference| of sigmoid(logits)
    max_extras_diff: float  # largest |difference| / (1 + |value|) of the other outputs (0 without any)
    graphs: tuple[str, ...] = ()  # the graph files of a folder export (empty: ``path`` is one graph)


class _Graph(nn.Module):
    """image [1,3,S,S] + tokens [B,T] + lengths [B] → (logits, *extras), image features broadcast."""

    def __init__(self, model: RefSegModel, extras: tuple[str, ...]) -> None:
        super().__init__()
        self.model = model
        self.extras = extras

    def forward(self, image: Tensor, tokens: Tensor, lengths: Tensor) -> tuple[Tensor, ...]:
        out = self.model(broadcast_batch(self.model.encode_image(image), tokens, lengths))
        return (out.logits, *(out.extras[name] for name in self.extras))


def export_onnx(
    model: RefSegModel,
    output: str | Path,
    image_size: int,
    opset: int = DEFAULT_OPSET,
    metadata: dict[str, str] | None = None,
) -> ExportResult:
    """Export ``model`` to ``output`` (atomically) in the most dynamic layout that verifies.

    Raises :class:`ConfigError` when the model cannot be exported (with the exporter's reason).
    """
    require("onnx", "ONNX export")
    import onnx

    from refseg.models.instance_ref import InstanceRef

    if model.onnx_unsupported:
        raise ConfigError(f"model {model.name!r} cannot be exported to ONNX: {model.onnx_unsupported}")
    if isinstance(model, InstanceRef):
        from refseg.export.instance_onnx import export_networks

        return export_networks(model, output, image_size, opset, metadata)
    output = Path(output)
    model = model.eval()
    max_tokens = token_cap(model)
    image = torch.randn(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    references = torch_references(model, image)
    extras = per_expression_extras(references)
    tokens, lengths = model.tokenize(list(PROBE_TEXTS[:2]))
    probe = (image, pad_tokens(tokens, max_tokens), lengths)  # the traced shapes: two texts, T = cap
    failures: list[str] = []
    traces: dict[bool, bytes | str] = {}  # one trace per batch mode; T is decided at verification
    for layout in LAYOUTS:
        if layout.dynamic_batch not in traces:
            traces[layout.dynamic_batch] = _trace_to_onnx(model, extras, probe, layout.dynamic_batch, opset)
        graph = traces[layout.dynamic_batch]
        if isinstance(graph, str):
            failures.append(f"{_describe(layout)}: {graph}")
            continue
        diffs = verify(lambda: OnnxRunner(onnx_session(graph, "cpu"), layout, max_tokens, ("logits", *extras)),
                       references, image, extras)
        if isinstance(diffs, str):
            failures.append(f"{_describe(layout)}: {diffs}")
            continue
        prob_diff, extras_diff = diffs
        proto = onnx.load_from_string(graph)
        for graph_input in proto.graph.input:  # inputs the model ignores were pruned by the exporter
            if graph_input.name == "tokens" and not layout.dynamic_words:
                graph_input.type.tensor_type.shape.dim[1].dim_value = max_tokens
        props = model_metadata(model, image_size, layout, max_tokens, ("logits", *extras))
        write_graph(proto, output, {**props, **(metadata or {})})
        return ExportResult(output, layout, max_tokens, ("logits", *extras), prob_diff, extras_diff)
    raise ConfigError(f"model {model.name!r} cannot be exported to ONNX ({'; '.join(failures)})")


def model_metadata(
    model: RefSegModel, image_size: int, layout: Layout, max_tokens: int, outputs: tuple[str, ...]
) -> dict[str, str]:
    """The ``metadata_props`` every refseg graph carries (see docs/export.md)."""
    return {
        "refseg_model": model.name,
        "refseg_config": json.dumps(model.config),
        "image_size": str(image_size),
        "tokenizer": json.dumps({"source": "model.tokenize", "max_tokens": max_tokens, "pad_id": 0}),
        "dynamic_batch": json.dumps(layout.dynamic_batch),
        "dynamic_words": json.dumps(layout.dynamic_words),
        "outputs": json.dumps(list(outputs)),
    }


def write_graph(proto, output: Path, props: dict[str, str]) -> None:
    """Write the ONNX ``proto`` with ``props`` as its metadata, atomically."""
    import onnx

    onnx.helper.set_model_props(proto, props)
    atomic_write_bytes(output, proto.SerializeToString())


def token_cap(model: RefSegModel) -> int:
    """The most tokens ``model.tokenize`` produces for one expression (its truncation cap)."""
    logging.disable(logging.WARNING)  # the tokenizer logs the (intended) truncation
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, lengths = model.tokenize(["word " * 512])
    finally:
        logging.disable(logging.NOTSET)
    return int(lengths.max())


def torch_references(model: RefSegModel, image: Tensor) -> list[tuple[list[str], Tensor, Tensor, ModelOutput]]:
    """PyTorch outputs for one and for three expressions (shapes other than the traced ones)."""
    references = []
    for texts in ([PROBE_TEXTS[1]], list(PROBE_TEXTS)):
        tokens, lengths = model.tokenize(texts)
        with torch.inference_mode():
            references.append((texts, tokens, lengths, model(broadcast_batch(model.encode_image(image), tokens, lengths))))
    return references


def _trace_to_onnx(
    model: RefSegModel,
    extras: tuple[str, ...],
    probe: tuple[Tensor, Tensor, Tensor],
    dynamic_batch: bool,
    opset: int,
) -> bytes | str:
    """The serialised ONNX graph (B and T declared dynamic, or B = 1), or the exporter's error."""
    image, tokens, lengths = probe
    axes: dict[str, dict[int, str]] = {}
    if dynamic_batch:
        axes = {"tokens": {0: "texts", 1: "words"}, "lengths": {0: "texts"}}
        axes.update({name: {0: "texts"} for name in ("logits", *extras)})
    else:
        tokens, lengths = tokens[:1], lengths[:1]
    return trace_graph(_Graph(model, extras), (image, tokens, lengths), INPUTS, ("logits", *extras), axes, opset)


def trace_graph(
    module: nn.Module,
    inputs: tuple[Tensor, ...],
    input_names: tuple[str, ...],
    output_names: tuple[str, ...],
    dynamic_axes: dict[str, dict[int, str]],
    opset: int,
) -> bytes | str:
    """``module`` traced on ``inputs`` as a serialised ONNX graph, or the exporter's error (one line)."""
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings: the verification is the real check
            torch.onnx.export(
                module,
                inputs,
                buffer,
                dynamo=False,
                opset_version=opset,
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
            )
    except Exception as exc:  # the exporter raises many types; the message is what matters
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return reason[:200]
    return buffer.getvalue()


def per_expression_extras(references: list[tuple[list[str], Tensor, Tensor, ModelOutput]]) -> tuple[str, ...]:
    """The extras of the references with one row per expression (what a graph outputs besides the logits)."""
    texts, *_, out = references[-1]
    return tuple(sorted(k for k, v in out.extras.items() if isinstance(v, Tensor) and v.dim() and v.shape[0] == len(texts)))


def verify(
    make_runner: Callable[[], Runner],
    references: list[tuple[list[str], Tensor, Tensor, ModelOutput]],
    image: Tensor,
    extras: tuple[str, ...],
) -> tuple[float, float] | str:
    """The largest differences of the runner that ``make_runner`` builds from the PyTorch references
    (see :func:`largest_differences`), or why it fails: onnxruntime's error, or over the tolerances."""
    try:
        prob_diff, extras_diff = largest_differences(make_runner(), references, image, extras)
    except Exception as exc:  # onnxruntime rejects a shape the trace froze, or an operator
        return f"onnxruntime failed: {str(exc).strip()[:200]}"
    if prob_diff > PROBABILITY_TOLERANCE or extras_diff > TOLERANCE:
        return (f"max |probability difference| {prob_diff:.2e} (at most {PROBABILITY_TOLERANCE}),"
                f" max |difference| / (1 + |value|) of the other outputs {extras_diff:.2e} (at most {TOLERANCE})")
    return prob_diff, extras_diff


def largest_differences(
    runner: Runner,
    references: list[tuple[list[str], Tensor, Tensor, ModelOutput]],
    image: Tensor,
    extras: tuple[str, ...],
) -> tuple[float, float]:
    """Largest |difference| between ``runner`` (onnxruntime) and the PyTorch references: of the
    probabilities (sigmoid of the logits), and of the other outputs scaled by 1 + |value| (see
    ``TOLERANCE``; equal values, infinities included, differ by 0)."""
    worst_probability = worst_extras = 0.0
    for texts, tokens, lengths, expected in references:
        got = runner.run(runner.encode_image(image), tokens, lengths, texts)
        if got.logits.shape != expected.logits.shape:
            return float("inf"), float("inf")
        gap = torch.sigmoid(got.logits.float()) - torch.sigmoid(expected.logits.float())
        worst_probability = max(worst_probability, float(gap.abs().max()))
        for name in extras:
            want = expected.extras[name].float()
            have = got.extras[name][tuple(slice(0, s) for s in want.shape)].float()  # padded T: the real words
            if have.shape != want.shape:
                return float("inf"), float("inf")
            gap = torch.where(have == want, 0.0, (have - want).abs() / (1 + want.abs()))
            worst_extras = max(worst_extras, float(gap.max()))
    return worst_probability, worst_extras


def export_checkpoint(
    model: RefSegModel,
    checkpoint: str | Path,
    output: str | Path,
    image_size: int,
    opset: int = DEFAULT_OPSET,
) -> ExportResult:
    """Export the model loaded from ``checkpoint``, recording the checkpoint's hash and metadata."""
    from refseg import __version__
    from refseg.engine.checkpoint import read_header

    metadata = {
        "checkpoint_sha256": file_sha256(checkpoint),
        "refseg_meta": json.dumps(read_header(checkpoint)["meta"]),
        "refseg_version": __version__,
    }
    return export_onnx(model, output, image_size, opset=opset, metadata=metadata)


def default_onnx_path(checkpoint: str | Path) -> Path:
    """Where ``refseg export onnx`` writes by default and the onnx runtime looks first (a folder
    of graphs for ``instance_ref``)."""
    return Path(checkpoint).with_suffix(".onnx")


def graph_files(path: str | Path) -> list[Path]:
    """The graph files of an export: the file itself, or each graph of a folder export."""
    from refseg.runtime.onnx_networks import GRAPHS

    path = Path(path)
    return [path / f"{name}.onnx" for name in GRAPHS] if path.is_dir() else [path]


def export_size(path: str | Path) -> int:
    """Bytes of an export (every graph of a folder)."""
    return sum(f.stat().st_size for f in graph_files(path))


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an exported refseg ONNX file (weights are not loaded)."""
    require("onnx", "reading an ONNX file", ("onnx",))
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError, ...
        raise CheckpointError(f"{path} is not a readable ONNX file: {str(exc).splitlines()[0] if str(exc) else exc}") from None
    props = {p.key: p.value for p in proto.metadata_props}
    if "refseg_model" not in props:
        raise CheckpointError(f"{path} is not an ONNX file exported by refseg")
    return props


def _describe(layout: Layout) -> str:
    batch = "dynamic texts" if layout.dynamic_batch else "one text"
    words = "dynamic words" if layout.dynamic_words else "words padded to the cap"
    return f"{batch}, {words}"
