"""LSTM-CNN (Hu, Rohrbach & Darrell 2016, "Segmentation from Natural Language Expressions")."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from refseg.errors import ConfigError
from refseg.models.base import Batch, ModelOutput, register
from refseg.models.image_text import DEEPEST_TAP, ImageTextModel
from refseg.models.layers import bilinear_deconv, conv1x1_over_concat, coord_channels, l2_normalize

STAGES = ("low", "high")
TEXT_COORDS = ("none", "absolute", "relative")


def relative_coords(scores: Tensor, coords: Tensor, min_spread: float = 0.1) -> Tensor:
    """Coordinates [B, 2, h, w] relative to a response map [B, 1, h, w]: centred on its mean
    position weighted by sigmoid(scores) and divided by the weighted spread (at least
    ``min_spread``) per axis, clipped to [-3, 3]."""
    weights = torch.sigmoid(scores)
    weights = weights / weights.sum(dim=(2, 3), keepdim=True).clamp(min=1e-6)
    centre = (weights * coords).sum(dim=(2, 3), keepdim=True)  # [B, 2, 1, 1]
    spread = (weights * (coords - centre) ** 2).sum(dim=(2, 3), keepdim=True).sqrt().clamp(min=min_spread)
    return ((coords - centre) / spread).clamp(-3.0, 3.0)


class LstmCnnHead(nn.Module):
    """Paper 1 §3.3: tile the L2-normalised h_T over the L2-normalised feature map with 2-d
    coordinates (D* = D_im + D_text + 2), classify every location with two 1x1 convolutions
    (D_cls hidden units, ReLU) into a low-resolution response map, then upsample it with a
    2s x 2s deconvolution of stride s initialised to bilinear interpolation.

    The first 1x1 convolution over [visual; coordinates; tiled text] is evaluated part by part
    (:func:`conv1x1_over_concat`): the text enters as one vector per expression and the
    coordinates once per map, instead of D_text + 2 channels at every location.

    ``context`` > 0 (ours; the paper's classifier sees one location at a time) adds that many
    residual 3x3 convolutions with dilations 1, 2, 4, ... on the hidden D_cls map before the last
    1x1 convolution (h ← ReLU(h + g·conv(h)), each gate g starting at 0 so training starts from
    the paper's head), so a location's score can depend on the text-conditioned evidence around it
    ("the zebra on the left" is the leftmost of the zebras, not whatever lies left of centre).

    ``text_coords`` (ours) lets the expression set coordinate weights. ``"absolute"``: every
    hidden unit gets x and y slopes W h_T on top of its fixed ones, i.e. the classifier also sees
    the products x h_T and y h_T. In the paper's head, "left" can only act through the ReLU gating
    of a sum; trained on the bundled data that head learned no position words at all (it scores
    the same on an expression and on its mirror image). ``"relative"`` adds slopes on coordinates
    relative to the head's own first map (centred on its sigmoid-weighted mean, scaled by its
    spread, both held fixed in the backward pass), so "left" can mean left of the other zebras
    rather than left of the photo. The projection starts at zero, so training starts from the
    paper's head."""

    def __init__(
        self, visual_dim: int, text_dim: int, classifier: int, stride: int, context: int = 0, text_coords: str = "none"
    ) -> None:
        super().__init__()
        if context < 0:
            raise ConfigError(f"context must be >= 0, got {context}")
        if text_coords not in TEXT_COORDS:
            raise ConfigError(f"text_coords must be one of {TEXT_COORDS}, got {text_coords!r}")
        self.classifier = nn.Sequential(
            nn.Conv2d(visual_dim + text_dim + 2, classifier, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(classifier, 1, kernel_size=1),
        )
        self.context = nn.ModuleList(
            nn.Conv2d(classifier, classifier, kernel_size=3, padding=2**i, dilation=2**i) for i in range(context)
        )
        # one gate per residual branch, starting at 0: training starts from the paper's head and
        # Adam opens the branches gradually (a zero-initialised convolution would jump instead)
        self.context_gates = nn.Parameter(torch.zeros(context)) if context else None
        self.relative = text_coords == "relative"
        frames = {"none": 0, "absolute": 1, "relative": 2}[text_coords]
        self.text_coords = nn.Linear(text_dim, 2 * frames * classifier) if frames else None
        if self.text_coords is not None:
            nn.init.zeros_(self.text_coords.weight)
            nn.init.zeros_(self.text_coords.bias)
        self.deconv = bilinear_deconv(1, stride)

    def low_res(self, visual: Tensor, sentence: Tensor) -> Tensor:
        """Feature map [B, C, h, w] + sentence [B, D] → response map [B, 1, h, w].

        Both are L2-normalised and then scaled by sqrt(dim): the same directions as the paper,
        with entries of order 1 like the coordinates, which Adam-style optimisers need.
        """
        h, w = visual.shape[-2:]
        visual = l2_normalize(visual) * math.sqrt(visual.shape[1])
        coords = coord_channels(h, w, "2d", device=visual.device, dtype=visual.dtype)
        language = l2_normalize(sentence, dim=1) * math.sqrt(sentence.shape[1])
        hidden = conv1x1_over_concat(self.classifier[0], [visual, coords, language])
        if self.text_coords is not None:
            frames = coords.expand(hidden.shape[0], -1, -1, -1)
            if self.relative:
                first = self.classifier[2](torch.relu(hidden))
                frames = torch.cat([frames, relative_coords(first.detach(), coords)], dim=1)
            slopes = self.text_coords(language).view(hidden.shape[0], -1, hidden.shape[1])  # [B, frames, D_cls]
            hidden = hidden + torch.einsum("bkc,bkhw->bchw", slopes, frames)
        hidden = self.classifier[1](hidden)
        for i, conv in enumerate(self.context):
            hidden = torch.relu(hidden + self.context_gates[i] * conv(hidden))
        return self.classifier[2](hidden)

    def high_res(self, low: Tensor, canvas: int) -> Tensor:
        """[B, 1, h, w] → [B, 1, S, S] (the deconvolution output cropped to the canvas)."""
        return self.deconv(low)[..., :canvas, :canvas]


@register("lstm_cnn")
class LstmCnn(ImageTextModel):
    """LSTM-CNN, paper 1 §3: LSTM sentence encoder (§3.2), L2-normalised CNN features with
    coordinates (§3.1), per-location two-layer classifier and deconvolution (§3.3), weighted
    logistic loss α_f = 3, α_b = 1 (§3.3 eq. 2).

    Two-stage training (§4.2) is the ``stage`` switch: ``"low"`` outputs and trains the
    coarse h x w map against downsampled labels; ``"high"`` (fine-tune from a low checkpoint,
    same parameters) outputs the deconvolved S x S map. ``extras["low_res_logits"]`` always
    holds the coarse map. Paper widths: ``hidden=1000, classifier=500`` (defaults are smaller
    for CPU training); the paper's stride is 32 (``output_stride=8/16`` gives finer maps).
    ``context`` adds 3x3 context layers and ``text_coords`` expression-dependent coordinate
    weights to the classifier (:class:`LstmCnnHead`; 0 and ``"none"`` = the paper).
    """

    stages = STAGES

    def __init__(
        self, classifier: int = 256, stage: str = "high", context: int = 0, text_coords: str = "none", **shared: Any
    ) -> None:
        super().__init__(classifier=classifier, stage=stage, context=context, text_coords=text_coords, **shared)
        self.set_stage(stage)
        self.head = LstmCnnHead(
            self.backbone.channels[-1], self.text.dim, classifier, self.backbone.strides[-1], context, text_coords
        )

    def encode_image(self, images: Tensor) -> list[Tensor]:
        """Only the deepest tap is read (and cached)."""
        return self.backbone(images)[-1:]

    def image_encoding(self) -> str:
        return DEEPEST_TAP

    def forward(self, batch: Batch) -> ModelOutput:
        visual = self.image_features(batch)[-1]
        low = self.head.low_res(visual, self.encode_text(batch).sentence)
        extras = {"low_res_logits": low}
        if self.stage == "low":
            return ModelOutput(low, extras)
        canvas = self.canvas_size(batch, visual, self.backbone.strides[-1])
        return ModelOutput(self.head.high_res(low, canvas), extras)
