"""The ``onnx`` runner: an exported graph (:mod:`refseg.export.onnx`) run by onnxruntime (extra ``onnx``)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from refseg.models.base import ModelOutput, RefSegModel
from refseg.runtime.base import Runner, register_runner

if TYPE_CHECKING:
    from refseg.runtime.card import ModelCard


@dataclass(frozen=True)
class Layout:
    """Which input axes the exported graph accepts at any size."""

    dynamic_batch: bool
    dynamic_words: bool


class OnnxRunner:
    """The :class:`~refseg.runtime.base.Runner` for onnxruntime: one graph call per photo and
    batch of expressions (per expression when the graph takes one text)."""

    def __init__(self, session: Any, layout: Layout, max_tokens: int, outputs: tuple[str, ...]) -> None:
        self.session = session
        self.layout = layout
        self.max_tokens = max_tokens
        self.outputs = outputs
        self._inputs = {i.name for i in session.get_inputs()}  # unused inputs are pruned by the exporter

    @classmethod
    def from_file(cls, path: str | Path, device: str = "cpu") -> "OnnxRunner":
        from refseg.export.onnx import read_metadata

        props = read_metadata(path)
        layout = Layout(json.loads(props["dynamic_batch"]), json.loads(props["dynamic_words"]))
        tokenizer = json.loads(props["tokenizer"])
        outputs = tuple(json.loads(props["outputs"]))
        return cls(onnx_session(str(path), device), layout, int(tokenizer["max_tokens"]), outputs)

    def encode_image(self, images: Tensor) -> np.ndarray:
        """The graph encodes the image itself; this only hands the array over."""
        return np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)

    def run(self, features: np.ndarray, tokens: Tensor, lengths: Tensor, texts: list[str]) -> ModelOutput:
        if not self.layout.dynamic_words:
            tokens = pad_tokens(tokens, self.max_tokens)
        one_photo = features.shape[0] == 1
        if one_photo and self.layout.dynamic_batch:
            rows = [slice(None)]
        else:
            rows = [slice(i, i + 1) for i in range(tokens.shape[0])]
        parts = [self._call(features if one_photo else features[r], tokens[r], lengths[r]) for r in rows]
        merged = [torch.cat([torch.from_numpy(p[k]) for p in parts]) for k in range(len(self.outputs))]
        return ModelOutput(logits=merged[0], extras=dict(zip(self.outputs[1:], merged[1:])))

    def _call(self, image: np.ndarray, tokens: Tensor, lengths: Tensor) -> list[np.ndarray]:
        feed = {"image": image, "tokens": tokens.numpy().astype(np.int64), "lengths": lengths.numpy().astype(np.int64)}
        return self.session.run(list(self.outputs), {k: v for k, v in feed.items() if k in self._inputs})


@register_runner("onnx", extra="onnx")
def create_onnx_runner(model: RefSegModel, card: "ModelCard", device: str | torch.device = "cpu") -> Runner:
    """The runner for ``runtime="onnx"``: the graph (``instance_ref``: the folder of graphs) exported
    from this very checkpoint at this canvas, :func:`~refseg.export.onnx.default_onnx_path` when it
    is one, else exported once into the cache folder (``$REFSEG_CACHE`` or ``~/.cache/refseg``) and reused.
    """
    from refseg.errors import ConfigError
    from refseg.export.onnx import default_onnx_path, export_checkpoint

    if model.onnx_unsupported:
        raise ConfigError(f"model {model.name!r} cannot run on the onnx runtime: {model.onnx_unsupported}")
    source = card.provenance
    if source is None:
        raise ConfigError("the onnx runtime needs a model loaded from a checkpoint file")
    path = default_onnx_path(source.path)
    if not _exported_from(path, source.sha256, card.canvas):
        cache = Path(os.environ.get("REFSEG_CACHE") or Path.home() / ".cache" / "refseg") / "onnx"
        path = cache / f"{source.path.stem}-{source.sha256[:16]}-{card.canvas}.onnx"
        if not _exported_from(path, source.sha256, card.canvas):
            cache.mkdir(parents=True, exist_ok=True)
            export_checkpoint(model, source.path, path, card.canvas)
    return _open(model, path, str(device))


def _open(model: RefSegModel, path: Path, device: str) -> Runner:
    """The runner of an export: one graph, or a folder of graphs (``instance_ref``'s networks)."""
    from refseg.runtime.onnx_networks import NetworksRunner

    if path.is_dir():
        return NetworksRunner.from_folder(model, path, device)
    return OnnxRunner.from_file(path, device)


def onnx_session(model: bytes | str, device: str):
    """An onnxruntime session (CUDA first when ``device`` is a CUDA device and it is available)."""
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if str(device).startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    options = ort.SessionOptions()
    options.log_severity_level = 4  # failures surface as exceptions; no console noise
    return ort.InferenceSession(model, sess_options=options, providers=providers)


def pad_tokens(tokens: Tensor, length: int) -> Tensor:
    """Token ids [B, T] padded (or cut) to ``length`` words."""
    if tokens.shape[1] >= length:
        return tokens[:, :length]
    return torch.nn.functional.pad(tokens, (0, length - tokens.shape[1]))


def _exported_from(path: Path, digest: str, canvas: int) -> bool:
    """Whether ``path`` is an export (every graph of it) of the checkpoint ``digest`` at this canvas."""
    from refseg.errors import CheckpointError
    from refseg.export.onnx import graph_files, read_metadata

    try:
        props = [read_metadata(f) for f in graph_files(path)]
    except CheckpointError:
        return False
    return all(p.get("checkpoint_sha256") == digest and p.get("image_size") == str(canvas) for p in props)
