"""STEP: see-through-text grouping (Chen et al. 2019, paper 4 §3).

Per step t of a ConvGRU run for ``5·K`` steps (K = ``folds``):

1. visual level ``ℓ_t = t mod 5`` (§3.1): backbone feature map + 8-d coordinates, then a 3x3
   atrous convolution with rate 3 (§3.3) to a common width;
2. textual representation (eq. 1): every pixel attends over the biLSTM word states through
   the projections ``ṽ_i·h̃_j``; the per-pixel attentions are averaged with pixel weights
   ``softmax_i(P_{t-1}(i))`` from the previous heatmap, giving one word attention per step
   (``extras["word_attention"]`` [B, 5K, T]) and ``s_t = Σ_j α_tj h_j``;
3. co-embeddings ``φ(v) = L2(tanh(W_v v + b_v))``, ``ψ(s) = L2(tanh(W_s s + b_s))`` (eq. 2-3)
   and the STEP heatmap ``Q_t = max(0, <φ(v_i), ψ(s_t)>)`` (eq. 4), resized to the output grid;
4. ConvGRU refinement of ``Q_t`` (eq. 5-8, 3x3, 32 filters) and ``P_t = σ(W^P * h_t + b^P)``
   (eq. 9), which drives the attention of the next step.

Level mapping: the paper's five maps F1..F5 (ResNet conv1, res2 at stride 4; res3-res5 at
stride 8 with atrous convolution) become, shallow to deep, the EfficientNet-Lite taps at
strides 4, 8, 16, 32 (last MBConv block) and the 1280-d head conv on top of the last block;
with the default ``output_stride=8`` (DeepLab-style dilation) their strides are 4, 8, 8, 8, 8,
close to the paper's 4, 4, 8, 8, 8. Each level keeps its own resolution; the ConvGRU runs on
the grid of the ``grid_stride`` level: 4 by default (finer masks, and a cheap ConvGRU with 32
filters), 8 for the paper's 40x40 at 320 px.

Choices where the paper is silent or gives options: the first step uses a uniform heatmap
(the paper's "ini-LTR-uniform", reported as equivalent) so every step has a word attention;
the ConvGRU input is the one-channel ``Q_t`` by default; §3.5 sets its input channels to
c = 3 without naming them, and ``gru_channels=3`` reads them as [Q_t; P_{t-1}; ℓ_t / 4] (the
evidence of this step, the belief it refines, and which level the evidence comes from); the atrous convolutions map each level to a
common width, so ``φ`` and the attention projection are shared by the levels; the attention
scores are scaled by 1/sqrt(width) (scaled dot product); the loss is the logistic loss of the
logits upsampled to the canvas (eq. 10-11). The output bias starts at a background prior
(logit -2): from a zero bias the first, background-dominated updates push ``Q`` below zero
everywhere, where the ReLU of eq. 4 stops every gradient to the co-embedding for good.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from refseg.errors import ConfigError
from refseg.models.base import Batch, ModelOutput, register
from refseg.models.image_text import ImageTextModel
from refseg.models.layers import add_coords, conv_block, l2_normalize
from refseg.models.losses import weighted_bce
from refseg.models.recurrent import ConvGRUCell
from refseg.models.text import DEFAULT_MAX_LEN

LEVELS = 5
#: ConvGRU input channels: Q_t alone, or [Q_t; P_{t-1}; level] (see the module docstring)
GRU_CHANNELS = (1, 3)
#: initial output logit (most pixels are background), see the module docstring
FOREGROUND_PRIOR_LOGIT = -2.0


@register("step")
class STEP(ImageTextModel):
    """See-through-text grouping with a ConvGRU (paper 4 §3, Fig. 2-3).

    Defaults are sized for CPU training; the paper's widths are ``hidden=1000`` (biLSTM cell),
    ``visual_dim`` = the raw level width, ``attention_dim=400`` (eq. 1 projections),
    ``embed_space_dim=1000`` (eq. 2-3), ``gru_hidden=32``, ``gru_channels=3`` (§3.5) and ``folds`` 1 to 5.
    ``pos_weight`` > 1 weighs foreground pixels up in the loss, as paper 1 eq. 2 does (the paper: 1).
    """

    def __init__(
        self,
        vocab: Sequence[str] | None = None,
        output_stride: int = 8,
        text: str = "bilstm",
        embedding: str = "glove",
        hidden: int = 128,
        visual_dim: int = 128,
        attention_dim: int = 128,
        embed_space_dim: int = 128,
        gru_hidden: int = 32,
        gru_channels: int = 1,
        folds: int = 1,
        grid_stride: int = 4,
        max_len: int = DEFAULT_MAX_LEN,
        backbone_last: str = "block",
        pos_weight: float = 1.0,
        **shared: Any,
    ) -> None:
        if folds < 1:
            raise ConfigError(f"folds must be >= 1, got {folds}")
        if gru_channels not in GRU_CHANNELS:
            raise ConfigError(f"gru_channels must be one of {GRU_CHANNELS}, got {gru_channels}")
        if backbone_last != "block":
            raise ConfigError("step uses both the last block and the head of the backbone: backbone_last='block'")
        super().__init__(
            vocab=vocab,
            output_stride=output_stride,
            text=text,
            embedding=embedding,
            hidden=hidden,
            max_len=max_len,
            backbone_last=backbone_last,
            visual_dim=visual_dim,
            attention_dim=attention_dim,
            embed_space_dim=embed_space_dim,
            gru_hidden=gru_hidden,
            gru_channels=gru_channels,
            folds=folds,
            grid_stride=grid_stride,
            pos_weight=pos_weight,
            **shared,
        )
        strides = self.backbone.strides + [self.backbone.strides[-1]]
        if grid_stride not in strides:
            raise ConfigError(f"grid_stride must be one of the level strides {sorted(set(strides))}, got {grid_stride}")
        self.grid_level = strides.index(grid_stride)
        self.steps = LEVELS * folds
        channels = self.backbone.channels + [self.backbone.head_channels]
        self.levels = nn.ModuleList(conv_block(c + 8, visual_dim, kernel_size=3, dilation=3) for c in channels)
        self.pixel_key = nn.Conv2d(visual_dim, attention_dim, kernel_size=1)  # v_i → ṽ_i
        self.word_key = nn.Linear(self.text.dim, attention_dim)  # h_j → h̃_j
        self.attention_scale = attention_dim**-0.5  # scaled dot product: keeps early softmaxes soft
        self.phi = nn.Conv2d(visual_dim, embed_space_dim, kernel_size=1)  # eq. 2
        self.psi = nn.Linear(self.text.dim, embed_space_dim)  # eq. 3
        self.gru = ConvGRUCell(gru_channels, gru_hidden, kernel_size=3)  # eq. 5-8
        self.out = nn.Conv2d(gru_hidden, 1, kernel_size=1)  # eq. 9
        nn.init.constant_(self.out.bias, FOREGROUND_PRIOR_LOGIT)

    def encode_image(self, images: Tensor) -> list[Tensor]:
        """Five levels F1..F5: the four taps and the head conv over the last block."""
        taps = self.backbone(images)
        return taps + [self.backbone.head(taps[-1])]

    def image_encoding(self) -> str:
        return "backbone taps + head"

    def forward(self, batch: Batch) -> ModelOutput:
        features = self.image_features(batch)
        if len(features) != LEVELS:
            raise ValueError(f"step needs {LEVELS} feature levels, got {len(features)}")
        text = self.encode_text(batch)
        word_keys = self.word_key(text.words)  # [B, T, A]
        pad = ~text.mask[:, :, None, None]
        embedded, pixel_attention = [], []
        for level, feature in zip(self.levels, features):
            v = level(add_coords(feature, "8d"))
            scores = torch.einsum("bahw,bta->bthw", self.pixel_key(v), word_keys) * self.attention_scale
            pixel_attention.append(scores.masked_fill(pad, torch.finfo(scores.dtype).min).softmax(dim=1))
            embedded.append(l2_normalize(torch.tanh(self.phi(v))))  # φ(v_i)
        grid = embedded[self.grid_level].shape[-2:]
        hidden = self.gru.initial_state(embedded[self.grid_level])
        heatmap = hidden.new_full((hidden.shape[0], 1, *grid), 0.5)  # P_0: uniform
        attentions, step_maps = [], []
        for t in range(self.steps):
            ell = t % LEVELS
            level_heatmap = F.interpolate(heatmap, size=embedded[ell].shape[-2:], mode="bilinear", align_corners=False)
            pixel_weights = level_heatmap.flatten(1).softmax(dim=1)  # π{P_{t-1}(i)}
            attention = torch.einsum("btn,bn->bt", pixel_attention[ell].flatten(2), pixel_weights)
            sentence = torch.einsum("bt,btd->bd", attention, text.words)  # s_t, eq. 1
            psi = l2_normalize(torch.tanh(self.psi(sentence)), dim=-1)
            step_heatmap = torch.relu(torch.einsum("behw,be->bhw", embedded[ell], psi)).unsqueeze(1)  # Q_t, eq. 4
            step_heatmap = F.interpolate(step_heatmap, size=grid, mode="bilinear", align_corners=False)
            hidden = self.gru(self.gru_input(step_heatmap, heatmap, ell), hidden)
            logits = self.out(hidden)
            heatmap = torch.sigmoid(logits)
            attentions.append(attention)
            step_maps.append(logits)
        return ModelOutput(
            logits=logits,
            extras={"word_attention": torch.stack(attentions, dim=1), "step_maps": torch.cat(step_maps, dim=1)},
        )

    def gru_input(self, step_heatmap: Tensor, heatmap: Tensor, level: int) -> Tensor:
        """x_t of eq. 5-8: Q_t [B, 1, h, w], or [Q_t; P_{t-1}; ℓ_t / 4] when ``gru_channels=3``."""
        if self.config["gru_channels"] == 1:
            return step_heatmap
        level_map = torch.full_like(step_heatmap, level / (LEVELS - 1))
        return torch.cat([step_heatmap, heatmap, level_map], dim=1)

    def loss(self, out: ModelOutput, batch: Batch) -> Tensor:
        """Logistic loss of the final heatmap upsampled to the canvas (eq. 10-11); foreground pixels
        weigh ``pos_weight`` (1 in the paper)."""
        if batch.masks is None:
            raise ValueError("this loss needs target masks (Batch.masks is None)")
        logits = F.interpolate(out.logits, size=batch.masks.shape[-2:], mode="bilinear", align_corners=False)
        return weighted_bce(logits, batch.masks, batch.valid, pos_weight=self.config["pos_weight"])
