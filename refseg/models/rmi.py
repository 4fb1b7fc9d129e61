"""RMI: recurrent multimodal interaction (Liu et al. 2017, paper 3 §3.3).

A language LSTM reads the expression; at every word t the language representation
``l_t = [h_t; w_t]`` (LSTM state and word embedding) is tiled over the feature map and
concatenated with the visual features (the backbone's head features through a learned 1x1
projection, the "D_I" layer) and the 8-d spatial coordinates (§3.2), and a convolutional
multimodal LSTM with 1x1 kernels (eq. 7) updates its state at every location. (No L2
normalisation: that is paper 1's recipe, not paper 3's, and on unit-norm features the
mLSTM learned more slowly on ShapeRef.) A 1x1 convolution turns the mLSTM state after the last word into the mask
logits at feature resolution, trained with the plain logistic loss at that resolution
(eq. 6). The same head applied to the state after every word gives the per-word maps of
Fig. 6 (``extras["word_maps"]`` [B, T, h, w]); padding words do not update the state, so a
padded position repeats the map of the last real word. The head's bias starts at a
background prior (logit -2) so the first updates learn from the text, not the class balance.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from refseg.models.base import Batch, ModelOutput, register
from refseg.models.image_text import DEEPEST_TAP, ImageTextModel
from refseg.models.layers import add_coords
from refseg.models.losses import weighted_bce
from refseg.models.recurrent import ConvLSTMCell
from refseg.models.text import DEFAULT_MAX_LEN

#: initial output logit (most pixels are background)
FOREGROUND_PRIOR_LOGIT = -2.0


class RMIFeatures(ImageTextModel):
    """What RMI shares with its R+LSTM baseline (paper 3 §3.2): the language LSTM, the deepest
    backbone tap through a learned 1x1 projection to ``visual_dim`` (D_I) with the 8-d spatial
    coordinates, and the logistic loss at feature resolution (eq. 6). ``pos_weight`` > 1 weighs
    foreground pixels up, as paper 1 eq. 2 does (a departure, for small targets)."""

    def __init__(
        self,
        vocab: Sequence[str] | None = None,
        output_stride: int = 8,
        text: str = "lstm",
        embedding: str = "glove",
        hidden: int = 256,
        visual_dim: int = 256,
        max_len: int = DEFAULT_MAX_LEN,
        pos_weight: float = 1.0,
        **shared: Any,
    ) -> None:
        super().__init__(
            pos_weight=pos_weight,
            vocab=vocab,
            output_stride=output_stride,
            text=text,
            embedding=embedding,
            hidden=hidden,
            max_len=max_len,
            visual_dim=visual_dim,
            **shared,
        )
        self.visual = nn.Conv2d(self.backbone.channels[-1], visual_dim, kernel_size=1)

    def encode_image(self, images: Tensor) -> list[Tensor]:
        """Only the deepest tap is used (and cached)."""
        return self.backbone(images)[-1:]

    def image_encoding(self) -> str:
        return DEEPEST_TAP

    def spatial_features(self, batch: Batch) -> Tensor:
        """v_ij ∈ R^{D_I + 8}: projected visual features and spatial coordinates [B, D_I + 8, h, w]."""
        return add_coords(self.visual(self.image_features(batch)[-1]), "8d")

    def loss(self, out: ModelOutput, batch: Batch) -> Tensor:
        """Logistic loss at feature resolution (eq. 6), padding pixels excluded; foreground pixels
        weigh ``pos_weight`` (1 in the paper)."""
        return weighted_bce(out.logits, batch.masks, batch.valid, pos_weight=self.config["pos_weight"])


@register("rmi")
class RMI(RMIFeatures):
    """Recurrent multimodal interaction model (paper 3 §3.3, Fig. 3).

    Defaults are sized for CPU training; the paper's widths are ``visual_dim=1000,
    hidden=1000, embedding="learned", embed_dim=1000, mlstm_hidden=500`` (§4.2, D_I = D_S =
    1000, mLSTM cell 500) with the visual features at output stride 8 (atrous, §3.2).
    """

    def __init__(self, visual_dim: int = 256, mlstm_hidden: int = 128, **shared: Any) -> None:
        super().__init__(visual_dim=visual_dim, mlstm_hidden=mlstm_hidden, **shared)
        # The mLSTM's 1x1 convolution over [l_t; v_ij] (eq. 7) is split into its visual part (the
        # cell's input convolution, applied once per image) and its language part (per word).
        self.mlstm = ConvLSTMCell(visual_dim + 8, mlstm_hidden, kernel_size=1)
        self.word_gates = nn.Linear(self.text.dim + self.text.embed_dim, 4 * mlstm_hidden, bias=False)
        self.head = nn.Conv2d(mlstm_hidden, 1, kernel_size=1)
        nn.init.constant_(self.head.bias, FOREGROUND_PRIOR_LOGIT)

    def forward(self, batch: Batch) -> ModelOutput:
        visual_gates = self.mlstm.input_gates(self.spatial_features(batch))
        text = self.encode_text(batch)
        word_gates = self.word_gates(torch.cat([text.words, text.embeddings], dim=-1))  # l_t = [h_t; w_t]
        state = self.mlstm.initial_state(visual_gates)
        word_maps = []
        for t in range(word_gates.shape[1]):
            gates = visual_gates + word_gates[:, t, :, None, None]
            state = self.mlstm.step(gates, state, update=text.mask[:, t])
            word_maps.append(self.head(state[0]))
        maps = torch.cat(word_maps, dim=1)  # [B, T, h, w]
        return ModelOutput(logits=maps[:, -1:], extras={"word_maps": maps})
