"""The ``onnx`` runner of ``instance_ref``: its four exported graphs (:mod:`refseg.export.instance_onnx`)
joined by the model's own Python glue, the same code the torch runtime runs."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from refseg.models.base import ModelOutput
from refseg.models.candidate_cues import Candidates
from refseg.models.instance_ref import SCORER_EXTRAS, InstanceRef, candidate_extras
from refseg.runtime.base import broadcast_batch

#: The graph files of an exported folder, in the order the glue calls them.
GRAPHS = ("detector", "stuff_head", "mask_head", "scorer")


class OnnxNetworks:
    """:class:`~refseg.models.instance_ref.ImageNetworks` run by onnxruntime, one photo per call."""

    def __init__(self, sessions: dict[str, Any]) -> None:
        self.sessions = sessions

    def detector_outputs(self, rgb: Tensor) -> tuple[list[Tensor], Tensor, Tensor]:
        *taps, box_encodings, class_logits = self._per_photo("detector", [rgb])
        return taps, box_encodings, class_logits

    def stuff_probabilities(self, taps: list[Tensor]) -> Tensor:
        return self._per_photo("stuff_head", taps)[0]

    def instance_masks(self, taps: list[Tensor], boxes: Tensor, size: int, grid: int) -> Tensor:
        if boxes.shape[0] == 0:
            return boxes.new_zeros(0, grid, grid)
        return run_graph(self.sessions["mask_head"], [*taps, boxes])[0]

    def _per_photo(self, graph: str, inputs: list[Tensor]) -> list[Tensor]:
        """The graph's outputs for inputs of P photos, one call per photo (the graphs take one)."""
        calls = [run_graph(self.sessions[graph], list(photo)) for photo in zip(*(t.split(1) for t in inputs))]
        return [torch.cat(parts) for parts in zip(*calls)]


class NetworksRunner:
    """The :class:`~refseg.runtime.base.Runner` of ``instance_ref`` on onnxruntime: ``encode_image`` is
    the model's candidate glue over the detector, stuff head and mask head graphs; ``run`` is the scorer
    graph (one call per photo and batch of expressions)."""

    def __init__(self, model: InstanceRef, sessions: dict[str, Any]) -> None:
        self.model = model.eval()
        self.networks = OnnxNetworks(sessions)
        self.scorer = sessions["scorer"]

    @classmethod
    def from_folder(cls, model: InstanceRef, folder: str | Path, device: str = "cpu") -> "NetworksRunner":
        from refseg.runtime.onnx_runner import onnx_session

        return cls(model, {name: onnx_session(str(Path(folder) / f"{name}.onnx"), device) for name in GRAPHS})

    def encode_image(self, images: Tensor) -> Candidates:
        with torch.inference_mode():
            return self.model.candidates(images.detach().cpu().float(), networks=self.networks)

    def run(self, features: Candidates, tokens: Tensor, lengths: Tensor, texts: list[str]) -> ModelOutput:
        photos = features.to_list()
        if photos[0].shape[0] == 1:
            calls = [run_graph(self.scorer, [*photos, tokens, lengths])]
        else:
            calls = [run_graph(self.scorer, [*(t[i : i + 1] for t in photos), tokens[i : i + 1], lengths[i : i + 1]])
                     for i in range(tokens.shape[0])]
        logits, *extras = [torch.cat(parts) for parts in zip(*calls)]
        candidates = Candidates.from_list(broadcast_batch(photos, tokens, lengths).features)
        return ModelOutput(logits, {**dict(zip(SCORER_EXTRAS, extras)), **candidate_extras(candidates)})


def run_graph(session: Any, inputs: list[Tensor]) -> list[Tensor]:
    """One onnxruntime call: ``inputs`` in the graph's input order → its outputs as tensors."""
    feed = {i.name: x.detach().cpu().numpy() for i, x in zip(session.get_inputs(), inputs)}
    return [torch.from_numpy(out) for out in session.run(None, feed)]
