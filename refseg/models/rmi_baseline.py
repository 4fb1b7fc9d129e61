"""R+LSTM: the controlled baseline of RMI (Liu et al. 2017, paper 3 §3.2).

Paper 1's sentence-to-image scheme on RMI's own features: the language-only LSTM encodes the
whole expression into h_T, which is tiled over the same projected visual features and 8-d
coordinates RMI reads (:class:`~refseg.models.rmi.RMIFeatures`) and classified at every
location by two 1x1 convolutions, trained with the same logistic loss at feature resolution
(eq. 6, stride 8) and upsampled bilinearly at test time. Only the fusion differs from RMI, so
``rmi`` vs ``rmi_baseline`` is the comparison of paper 3 Tables 1-5 ("R+LSTM" vs "R+RMI").
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from refseg.models.base import Batch, ModelOutput, register
from refseg.models.rmi import FOREGROUND_PRIOR_LOGIT, RMIFeatures


@register("rmi_baseline")
class RMIBaseline(RMIFeatures):
    """R+LSTM (paper 3 §3.2, Fig. 2): [v_ij; h_T] → 1x1 conv (``classifier`` units, ReLU) → 1x1 conv.

    The first convolution is split into its visual part (once per image) and its sentence part
    (a vector per expression). Applied to the LSTM state after every word, the same classifier
    gives the per-word maps of paper 3 Fig. 1 (first row; ``extras["word_maps"]`` [B, T, h, w],
    padding positions repeat the last real word). ``classifier`` defaults to RMI's mLSTM width.
    """

    def __init__(self, classifier: int = 128, **shared: Any) -> None:
        super().__init__(classifier=classifier, **shared)
        self.visual_part = nn.Conv2d(self.config["visual_dim"] + 8, classifier, kernel_size=1)
        self.sentence_part = nn.Linear(self.text.dim, classifier, bias=False)
        self.head = nn.Conv2d(classifier, 1, kernel_size=1)
        nn.init.constant_(self.head.bias, FOREGROUND_PRIOR_LOGIT)

    def forward(self, batch: Batch) -> ModelOutput:
        visual = self.visual_part(self.spatial_features(batch))  # [B, C, h, w]
        text = self.encode_text(batch)
        states = torch.where(text.mask[..., None], text.words, text.sentence[:, None])  # h_t, then h_T
        sentence = self.sentence_part(states)  # [B, T, C]
        maps = torch.cat([self.classify(visual, sentence[:, t]) for t in range(sentence.shape[1])], dim=1)
        return ModelOutput(logits=maps[:, -1:], extras={"word_maps": maps})

    def classify(self, visual: Tensor, sentence: Tensor) -> Tensor:
        """Logits [B, 1, h, w] from the visual part [B, C, h, w] and one sentence part [B, C]."""
        return self.head(torch.relu(visual + sentence[:, :, None, None]))
