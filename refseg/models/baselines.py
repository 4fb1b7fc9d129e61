"""Baselines of paper 1 §4.1 (Hu, Rohrbach & Darrell 2016): the whole image, and the
combination of per-word segmentations."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from refseg.errors import ConfigError
from refseg.models import text as T
from refseg.models.base import Batch, ModelOutput, RefSegModel, register
from refseg.models.image_text import BackboneModel
from refseg.models.layers import conv_block
from refseg.models.losses import multilabel_logistic

COMBINE = ("average", "intersection", "union")
#: logit used for "certainly foreground" (whole image) and "certainly background" (no known word)
CONFIDENT_LOGIT = 10.0


@register("whole_image")
class WholeImage(RefSegModel):
    """Predicts the whole image for every expression (paper 1 §4.1, Table 1 "whole image").

    It has no parameters and nothing to train; the output is a constant 1 x 1 logit map, which
    the letterbox inversion spreads over the image (the padding is cropped away).
    """

    def __init__(self, max_len: int = T.DEFAULT_MAX_LEN) -> None:
        super().__init__(max_len=max_len)

    def tokenize(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        return T.encode(texts, lambda word: T.UNK_ID, self.config["max_len"])

    def encode_image(self, images: Tensor) -> list[Tensor]:
        return []

    @property
    def backbone_frozen(self) -> bool:
        return True

    def forward(self, batch: Batch) -> ModelOutput:
        logits = torch.full((batch.size, 1, 1, 1), CONFIDENT_LOGIT, device=batch.tokens.device)
        return ModelOutput(logits)


def default_words(n: int) -> list[str]:
    """Fallback word list when none is given: the ``n`` most frequent alphabetic GloVe words
    that are not stop words. Train with ``words=most_frequent_words(training texts, n)``."""
    return [w for w in T.glove_words()[: 20 * n + 1000] if w.isalpha() and w not in T.STOPWORDS][:n]


@register("per_word")
class PerWordBaseline(BackboneModel):
    """Combination of per-word segmentations (paper 1 §4.1).

    An FCN segments each of the N most frequent words (``words``, stop words removed) as an
    independent, non-exclusive category: multi-label logistic loss where a foreground pixel's
    label is 1 for every word present in the expression. At test time the maps of the
    expression's words are combined by ``combine``: ``"average"`` of their scores,
    ``"intersection"`` (min: every word's prediction must be on) or ``"union"`` (max). An
    expression without any of the N words predicts background everywhere. Paper: N = 500.
    Output: logits [B, 1, S, S]; ``extras["word_logits"]`` [B, N, h, w].
    """

    def __init__(
        self,
        words: Sequence[str] | None = None,
        num_words: int = 500,
        combine: str = "average",
        hidden: int = 256,
        max_len: int = T.DEFAULT_MAX_LEN,
        **shared: Any,
    ) -> None:
        if combine not in COMBINE:
            raise ConfigError(f"combine must be one of {COMBINE}, got {combine!r}")
        words = list(words) if words is not None else default_words(num_words)
        if not words:
            raise ConfigError("per_word needs at least one word")
        super().__init__(words=words, num_words=len(words), combine=combine, hidden=hidden, max_len=max_len, **shared)
        self.vocab = T.Vocab(words)
        self.head = nn.Sequential(
            conv_block(self.backbone.channels[-1], hidden, kernel_size=1), nn.Conv2d(hidden, len(words), 1)
        )

    def tokenize(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        return T.encode(texts, self.vocab.lookup, self.config["max_len"])

    def present_words(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """[B, N] float: 1 where word i of the list occurs in the expression."""
        real = torch.arange(tokens.shape[1], device=tokens.device)[None, :] < lengths[:, None]
        one_hot = F.one_hot(tokens * real, num_classes=len(self.vocab))[..., 2:]  # drop <pad>, <unk>
        return one_hot.amax(dim=1).float()

    def combine(self, word_logits: Tensor, present: Tensor) -> Tensor:
        """Per-word maps [B, N, h, w] → expression map [B, 1, h, w]."""
        on = present[:, :, None, None] > 0
        mode = self.config["combine"]
        if mode == "average":
            combined = (word_logits * on).sum(1) / present.sum(1).clamp(min=1)[:, None, None]
        elif mode == "intersection":
            combined = word_logits.masked_fill(~on, float("inf")).amin(dim=1)
        else:
            combined = word_logits.masked_fill(~on, float("-inf")).amax(dim=1)
        has_word = (present.sum(1) > 0)[:, None, None]
        return torch.where(has_word, combined, torch.full_like(combined, -CONFIDENT_LOGIT)).unsqueeze(1)

    def forward(self, batch: Batch) -> ModelOutput:
        visual = self.image_features(batch)[-1]
        word_logits = self.head(visual)
        present = self.present_words(batch.tokens, batch.lengths)
        # The expression's words first (at most T of them); their maps are upsampled to the
        # canvas as FCN-32s does (fixed bilinear interpolation), then combined.
        k = min(batch.tokens.shape[1], word_logits.shape[1])
        # present words first, ties broken by word index so every runtime picks the same order
        # (top-k exports to ONNX; plain ties would be resolved differently by onnxruntime)
        tie_break = torch.arange(present.shape[1], device=present.device) / (2 * present.shape[1])
        order = (present - tie_break).topk(k, dim=1).indices
        on = present.gather(1, order)
        h, w = word_logits.shape[-2:]
        stride = self.backbone.strides[-1]
        canvas = self.canvas_size(batch, visual, stride)
        maps = word_logits.gather(1, order[:, :, None, None].expand(-1, -1, h, w))
        maps = F.interpolate(maps, size=(h * stride, w * stride), mode="bilinear", align_corners=False)
        maps = maps[..., :canvas, :canvas]
        extras = {"word_logits": word_logits, "present": present, "present_maps": maps, "present_on": on}
        return ModelOutput(self.combine(maps, on), extras)

    def loss(self, out: ModelOutput, batch: Batch) -> Tensor:
        """Multi-label logistic loss over all N words: the expression's words at canvas
        resolution, the absent ones (all-background labels) at feature resolution."""
        word_logits, present = out.extras["word_logits"], out.extras["present"]
        on = out.extras["present_on"]
        words_present = multilabel_logistic(out.extras["present_maps"], on, batch.masks, batch.valid, word_weight=on)
        words_absent = multilabel_logistic(
            word_logits, torch.zeros_like(present), batch.masks, batch.valid, word_weight=1 - present
        )
        return (words_present + words_absent) / word_logits.shape[1]
