"""ONNX export of ``instance_ref`` as a folder of four graphs, one per network (run by
:class:`refseg.runtime.onnx_networks.NetworksRunner`; S = canvas side, K = boxes, B = expressions).

``detector.onnx``: ``rgb`` [1, 3, S, S] (canvas pixels, 0..255) → ``taps_4``, ``taps_8``, ``taps_16``,
``taps_32`` (MobileNetV2 features at those strides), ``box_encodings`` [1, A, 4], ``class_logits`` [1, A, 91].
``stuff_head.onnx``: ``taps_8``, ``taps_16``, ``taps_32`` → ``stuff_probs`` [1, stuff classes + 1, S/8, S/8].
``mask_head.onnx``: ``taps_4``, ``taps_8``, ``taps_16``, ``boxes`` [K, 4] → ``masks`` [K, S/2, S/2] (pasted on the canvas).
``scorer.onnx``: ``candidates.*`` (one photo's :class:`~refseg.models.candidate_cues.Candidates`), ``tokens``
[B, T], ``lengths`` [B] → ``logits`` [B, 1, S/2, S/2], ``candidate_scores``, ``candidate_chosen``, ``confidence``.

Between the graphs runs the model's own Python (:meth:`InstanceRef.candidates`), the same for both
runtimes. The export is verified like a single graph (:mod:`refseg.export.onnx`): the runner built from
the four graphs against the model, on a sample photo with one and with three expressions.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import Tensor, nn

from refseg.errors import ConfigError
from refseg.export.onnx import (
    DEFAULT_OPSET,
    PROBE_TEXTS,
    ExportResult,
    model_metadata,
    per_expression_extras,
    token_cap,
    torch_references,
    trace_graph,
    verify,
    write_graph,
)
from refseg.models.candidate_cues import Candidates
from refseg.models.instance_ref import MASK_STRIDES, SCORER_EXTRAS, STUFF_STRIDES, InstanceRef, at_strides, canvas_rgb
from refseg.runtime.base import broadcast_batch
from refseg.runtime.onnx_networks import GRAPHS, NetworksRunner
from refseg.runtime.onnx_runner import Layout, onnx_session

CANDIDATE_INPUTS = tuple(f"candidates.{f.name}" for f in fields(Candidates))
#: The scorer takes any number of expressions of any length.
LAYOUT = Layout(dynamic_batch=True, dynamic_words=True)


@dataclass(frozen=True)
class Network:
    """One graph: what it computes (``call(model, *inputs)``), its input and output names, dynamic axes."""

    name: str
    call: Callable[..., tuple[Tensor, ...]]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]]


class _Traced(nn.Module):
    """A network of ``model`` as the module the exporter traces."""

    def __init__(self, model: InstanceRef, call: Callable[..., tuple[Tensor, ...]]) -> None:
        super().__init__()
        self.model = model
        self.call = call

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        return self.call(self.model, *inputs)


def networks(size: int) -> tuple[Network, ...]:
    """The four graphs of a canvas of side ``size``, in :data:`GRAPHS` order."""
    outputs = ("logits", *SCORER_EXTRAS)
    return (
        Network("detector", _detector, ("rgb",), (*_taps(4, 8, 16, 32), "box_encodings", "class_logits"), {}),
        Network("stuff_head", lambda m, *taps: (m.stuff_probabilities(list(taps)),), _taps(*STUFF_STRIDES),
                ("stuff_probs",), {}),
        Network("mask_head", lambda m, *x: (m.instance_masks(list(x[:-1]), x[-1], size, size // 2),),
                (*_taps(*MASK_STRIDES), "boxes"), ("masks",), {"boxes": {0: "boxes"}, "masks": {0: "boxes"}}),
        Network("scorer", _scorer, (*CANDIDATE_INPUTS, "tokens", "lengths"), outputs,
                {"tokens": {0: "texts", 1: "words"}, "lengths": {0: "texts"}, **{n: {0: "texts"} for n in outputs}}),
    )


def export_networks(
    model: InstanceRef,
    output: str | Path,
    image_size: int,
    opset: int = DEFAULT_OPSET,
    metadata: dict[str, str] | None = None,
) -> ExportResult:
    """Export the four networks of ``model`` into the folder ``output`` (each file atomically), verified
    together; raises :class:`ConfigError` (one line) when a graph does not trace or verify."""
    import onnx

    folder = Path(output)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder} is a file; model {model.name!r} exports a folder of graphs, one per network")
    model = model.eval()
    image = probe_canvas(image_size)
    probes = _probe_inputs(model, image)
    graphs: dict[str, bytes] = {}
    for network in networks(image_size):
        traced = _Traced(model, network.call)
        graph = trace_graph(traced, probes[network.name], network.inputs, network.outputs, network.dynamic_axes, opset)
        if isinstance(graph, str):
            raise ConfigError(f"model {model.name!r} cannot be exported to ONNX ({network.name}: {graph})")
        graphs[network.name] = graph
    references = torch_references(model, image)
    extras = per_expression_extras(references)
    diffs = verify(lambda: NetworksRunner(model, {n: onnx_session(g, "cpu") for n, g in graphs.items()}),
                   references, image, extras)
    if isinstance(diffs, str):
        raise ConfigError(f"model {model.name!r} cannot be exported to ONNX ({diffs})")
    max_tokens = token_cap(model)
    props = {**model_metadata(model, image_size, LAYOUT, max_tokens, ("logits", *extras)), **(metadata or {}),
             "graphs": json.dumps(GRAPHS)}
    folder.mkdir(parents=True, exist_ok=True)
    for name, graph in graphs.items():
        write_graph(onnx.load_from_string(graph), folder / f"{name}.onnx", {**props, "graph": name})
    return ExportResult(folder, LAYOUT, max_tokens, ("logits", *extras), *diffs, graphs=GRAPHS)


def probe_canvas(size: int) -> Tensor:
    """The verification photo (the first sample photo) letterboxed on a ``size`` canvas [1, 3, S, S]."""
    from refseg.data.transforms import Letterbox, to_tensor
    from refseg.samples import SAMPLES

    rgb = SAMPLES[0].load()
    return to_tensor(Letterbox(rgb.shape[0], rgb.shape[1], size).image(rgb)).unsqueeze(0)


def _probe_inputs(model: InstanceRef, image: Tensor) -> dict[str, tuple[Tensor, ...]]:
    """What each graph is traced on: the probe photo's own tensors, two boxes, two expressions."""
    size = image.shape[-1]
    rgb = canvas_rgb(image)
    with torch.no_grad():
        taps, _, _ = model.detector_outputs(rgb)
        candidates = model.candidates(image, taps)
    boxes = torch.tensor([[0.1, 0.2, 0.6, 0.9], [0.4, 0.05, 0.95, 0.5]]) * size
    tokens, lengths = model.tokenize(list(PROBE_TEXTS[:2]))
    return {
        "detector": (rgb,),
        "stuff_head": tuple(at_strides(taps, STUFF_STRIDES)),
        "mask_head": (*at_strides(taps, MASK_STRIDES), boxes),
        "scorer": (*candidates.to_list(), tokens, lengths),
    }


def _taps(*strides: int) -> tuple[str, ...]:
    return tuple(f"taps_{s}" for s in strides)


def _detector(model: InstanceRef, rgb: Tensor) -> tuple[Tensor, ...]:
    taps, box_encodings, class_logits = model.detector_outputs(rgb)
    return (*taps, box_encodings, class_logits)


def _scorer(model: InstanceRef, *inputs: Tensor) -> tuple[Tensor, ...]:
    *candidates, tokens, lengths = inputs
    out = model(broadcast_batch(list(candidates), tokens, lengths))
    return (out.logits, *(out.extras[name] for name in SCORER_EXTRAS))
