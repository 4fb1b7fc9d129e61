"""The ``torch`` runner: a :class:`RefSegModel` run by PyTorch, backbone once per photo."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from refseg.models.base import ModelOutput, RefSegModel
from refseg.runtime.base import broadcast_batch, register_runner

if TYPE_CHECKING:
    from refseg.runtime.card import ModelCard


@dataclass
class ImageFeatures:
    """What :class:`TorchRunner` keeps of P photos: their canvases [P, 3, S, S] and backbone taps."""

    canvas: Tensor
    taps: list[Tensor]

    @classmethod
    def cached(cls, taps: list[Tensor], photos: int, side: int, device: torch.device) -> "ImageFeatures":
        """Taps of ``photos`` photos computed earlier (a feature cache): the canvas is a blank view,
        only its side S is read."""
        return cls(torch.zeros((), device=device).expand(photos, 3, side, side), taps)


class TorchRunner:
    """Runs a :class:`RefSegModel` with torch: backbone once, then the rest per batch of texts.

    With ``channels_last`` on CPU the model's ``backbone`` (when it has one) runs in
    channels-last memory format, about 8 % less CPU time for EfficientNet-Lite
    (docs/performance.md); its outputs are made contiguous again so the model's head sees
    ordinary tensors. Evaluation keeps the plain format (the trainer's validation numbers exactly).
    """

    def __init__(self, model: RefSegModel, device: str | torch.device = "cpu", channels_last: bool = True) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        backbone = getattr(model, "backbone", None)
        self.channels_last = channels_last and self.device.type == "cpu" and isinstance(backbone, torch.nn.Module)
        if self.channels_last:
            backbone.to(memory_format=torch.channels_last)

    def encode_image(self, images: Tensor) -> ImageFeatures:
        images = images.to(self.device)
        with torch.inference_mode():
            if not self.channels_last:
                return ImageFeatures(images, self.model.encode_image(images))
            taps = self.model.encode_image(images.contiguous(memory_format=torch.channels_last))
            return ImageFeatures(images, [t.contiguous() for t in taps])

    def run(self, features: ImageFeatures, tokens: Tensor, lengths: Tensor, texts: list[str]) -> ModelOutput:
        batch = broadcast_batch(features.taps, tokens.to(self.device), lengths.to(self.device), texts, features.canvas)
        with torch.inference_mode():
            return self.model(batch)


@register_runner("torch")
def create_torch_runner(
    model: RefSegModel, card: "ModelCard", device: str | torch.device = "cpu", channels_last: bool = True
) -> TorchRunner:
    """The default runner (``runtime="torch"``)."""
    return TorchRunner(model, device, channels_last=channels_last)
