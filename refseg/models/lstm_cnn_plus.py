"""LSTM-CNN+ (Hu, Rohrbach & Darrell 2016b, "Utilizing Large Scale Vision and Text Datasets for
Image Segmentation from Referring Expressions"): LSTM-CNN with GloVe embeddings and a
category branch."""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from refseg.errors import ConfigError
from refseg.labels import IMAGENET_CLASSES, SEGMENTATION_CATEGORIES
from refseg.models.base import Batch, ModelOutput, register
from refseg.models.image_text import DEEPEST_TAP, ImageTextModel
from refseg.models.layers import conv_block, probability_to_logit
from refseg.models.losses import category_cross_entropy, weighted_bce
from refseg.models.lstm_cnn import STAGES, LstmCnnHead
from refseg.models.text_encoders import TextFeatures

CATEGORY_SOURCES = ("segmentation", "imagenet")
CATEGORY_TEXT = ("learned", "zero_shot", "both")
FUSIONS = ("average", "logit")


def category_names(source: str) -> tuple[str, ...]:
    """The M classes of a category source, as words a person would use."""
    from refseg.labels import clean_category

    if source == "imagenet":
        return IMAGENET_CLASSES
    return tuple(clean_category(name) for name in SEGMENTATION_CATEGORIES)


@register("lstm_cnn_plus")
class LstmCnnPlus(ImageTextModel):
    """LSTM-CNN+ (paper 2): the LSTM-CNN of paper 1 over GloVe word embeddings kept fixed
    (§2.1; ``embedding="glove_full"`` also covers words never seen in training) plus the
    category branch of §2.3 fused by eq. 2.

    Category branch: the text is mapped to an M-class distribution p_text by a two-layer MLP
    over the LSTM's h_T (``category_text="learned"``), by zero-shot similarity of the words to
    the class names in GloVe (or MiniLM) space with a learned temperature (``"zero_shot"``), or
    the sum of both logits (``"both"``). The image gives a per-location distribution p_image
    from either (``category_source``)

    * ``"segmentation"`` — a category segmentation head over the COCO panoptic + CamVid
      classes (:data:`SEGMENTATION_CATEGORIES`), trained with per-pixel cross-entropy when the
      batch carries ``categories`` labels (weight ``category_weight``) and end to end otherwise;
    * ``"imagenet"`` — the frozen backbone's ImageNet classifier applied at every location
      (1000 classes, nothing to train on the image side). p_image then depends on the photo
      only, so :meth:`encode_image` computes it once per photo (and the feature cache keeps it).

    p_fg^(2) = <p_image, p_text> (eq. 1). ``fusion="average"`` is eq. 2: the output probability
    is α p_fg^(1) + (1 − α) p_fg^(2) with α = sigmoid(a) ∈ (0, 1) learned end to end, and
    ``logits`` are its logit. ``fusion="logit"`` (ours) adds the logits instead,
    logit p_fg^(1) + β logit p_fg^(2) with β learned (``alpha`` then reports β): the main branch
    can veto a location of the named category (the zebra on the *right*), which the average of
    eq. 2 cannot do once α < 1/2.

    ``context`` adds 3x3 context layers and ``text_coords`` expression-dependent coordinate
    weights to the main branch's classifier (:class:`LstmCnnHead`).

    ``freeze_embedding`` defaults to fixed GloVe vectors and trained ``embedding="learned"`` ones
    (the ablation of paper 2 Table 1).

    ``feature_dropout`` drops backbone feature entries in training, before both branches: with a few
    hundred photos the heads otherwise memorise the frozen features of the training photos.

    When the batch carries ``target_categories`` (the category of each target, known for
    synthesized data) and the source is ``"segmentation"`` (their label space), the text→category classifier is also trained directly with
    cross-entropy (weight ``text_category_weight``), as the text classifier of §2.3 is trained
    on labelled text. Extras: ``low_res_logits`` (main branch), ``category_map`` (p_fg^(2) at
    feature resolution), ``alpha``, ``text_category_logits``, and ``category_logits``
    (segmentation source).
    """

    stages = STAGES

    def __init__(
        self,
        classifier: int = 256,
        stage: str = "high",
        context: int = 0,
        text_coords: str = "none",
        category_source: str = "segmentation",
        category_text: str = "both",
        category_hidden: int = 256,
        category_weight: float = 1.0,
        text_category_weight: float = 0.5,
        fusion: str = "average",
        feature_dropout: float = 0.0,
        alpha_init: float = 0.7,
        embedding: str = "glove_full",
        freeze_embedding: bool | None = None,
        **shared: Any,
    ) -> None:
        if freeze_embedding is None:  # GloVe vectors stay fixed (§2.1); random ones must learn
            freeze_embedding = embedding != "learned"
        if category_source not in CATEGORY_SOURCES:
            raise ConfigError(f"category_source must be one of {CATEGORY_SOURCES}, got {category_source!r}")
        if category_text not in CATEGORY_TEXT:
            raise ConfigError(f"category_text must be one of {CATEGORY_TEXT}, got {category_text!r}")
        if fusion not in FUSIONS:
            raise ConfigError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if not 0.0 <= feature_dropout < 1.0:
            raise ConfigError(f"feature_dropout must be in [0, 1), got {feature_dropout}")
        if not 0.0 < alpha_init < 1.0:
            raise ConfigError(f"alpha_init must be in (0, 1), got {alpha_init}")
        super().__init__(
            classifier=classifier,
            stage=stage,
            context=context,
            text_coords=text_coords,
            category_source=category_source,
            category_text=category_text,
            category_hidden=category_hidden,
            category_weight=category_weight,
            text_category_weight=text_category_weight,
            fusion=fusion,
            feature_dropout=feature_dropout,
            alpha_init=alpha_init,
            embedding=embedding,
            freeze_embedding=freeze_embedding,
            **shared,
        )
        self.set_stage(stage)
        if category_source == "imagenet" and not self.backbone.num_classes:
            raise ConfigError(f"backbone {self.backbone.name} has no ImageNet classifier: use category_source=segmentation")
        visual_dim, stride = self.backbone.channels[-1], self.backbone.strides[-1]
        self.head = LstmCnnHead(visual_dim, self.text.dim, classifier, stride, context, text_coords)
        self.feature_dropout = nn.Dropout(feature_dropout)
        names = category_names(category_source)
        if category_source == "segmentation":
            self.category_head = nn.Sequential(
                conv_block(visual_dim, category_hidden, kernel_size=1), nn.Conv2d(category_hidden, len(names), 1)
            )
        if category_text in ("learned", "both"):
            self.text_classifier = nn.Sequential(
                nn.Linear(self.text.dim, category_hidden), nn.ReLU(inplace=True), nn.Linear(category_hidden, len(names))
            )
        if category_text in ("zero_shot", "both"):
            # Class-name vectors are rebuilt from the packages at construction, never saved.
            self.register_buffer("class_vectors", self.text.encode_phrases(names), persistent=False)
            self.log_temperature = nn.Parameter(torch.tensor(math.log(10.0)))
        if fusion == "average":
            self.alpha_logit = nn.Parameter(torch.tensor(math.log(alpha_init / (1 - alpha_init))))
        else:
            self.category_scale = nn.Parameter(torch.tensor(1.0))

    def text_class_logits(self, text: TextFeatures) -> Tensor:
        """p_text before the softmax: [B, M]."""
        mode = self.config["category_text"]
        logits = 0.0
        if mode in ("learned", "both"):
            logits = logits + self.text_classifier(text.sentence)
        if mode in ("zero_shot", "both"):
            logits = logits + self.log_temperature.exp() * self.text.zero_shot_scores(text, self.class_vectors)
        return logits

    def imagenet_probabilities(self, visual: Tensor) -> Tensor:
        """p_image of the ImageNet source: [B, 1000, h, w] class probabilities at every location."""
        return self.backbone.imagenet_logits(visual).softmax(dim=1)

    def image_encoding(self) -> str:
        return f"p_image + {DEEPEST_TAP}" if self.config["category_source"] == "imagenet" else DEEPEST_TAP

    def encode_image(self, images: Tensor) -> list[Tensor]:
        """``[visual]`` (the deepest tap), or ``[p_image, visual]`` for the ImageNet source.

        The deepest tap stays last, as in the backbone's own taps, so :meth:`forward` also accepts
        those (it computes p_image itself when the features come without it).
        """
        visual = self.backbone(images)[-1]
        if self.config["category_source"] == "imagenet":
            return [self.imagenet_probabilities(visual), visual]
        return [visual]

    def forward(self, batch: Batch) -> ModelOutput:
        features = self.image_features(batch)
        visual = self.feature_dropout(features[-1])
        text = self.encode_text(batch)
        low = self.head.low_res(visual, text.sentence)
        category_logits = None
        if self.config["category_source"] == "segmentation":
            category_logits = self.category_head(visual)
            p_image = category_logits.softmax(dim=1)
        elif len(features) == 2:  # the layout of encode_image
            p_image = features[0]
        else:  # the backbone's own taps (e.g. computed for another model): no p_image among them
            p_image = self.imagenet_probabilities(visual)
        text_logits = self.text_class_logits(text)
        category_map = torch.einsum("bmhw,bm->bhw", p_image, text_logits.softmax(dim=-1)).unsqueeze(1)
        average = self.config["fusion"] == "average"
        alpha = torch.sigmoid(self.alpha_logit) if average else self.category_scale
        extras = {
            "low_res_logits": low,
            "category_map": category_map,
            "alpha": alpha.reshape(1),
            "text_category_logits": text_logits,
        }
        if category_logits is not None:
            extras["category_logits"] = category_logits
        if self.stage == "low":
            main = low
        else:
            stride = self.backbone.strides[-1]
            main = self.head.high_res(low, self.canvas_size(batch, visual, stride))
            grid = (category_map.shape[-2] * stride, category_map.shape[-1] * stride)
            category_map = F.interpolate(category_map, size=grid, mode="bilinear", align_corners=False)
            category_map = category_map[..., : main.shape[-2], : main.shape[-1]]
        if average:
            return ModelOutput(probability_to_logit(alpha * torch.sigmoid(main) + (1 - alpha) * category_map), extras)
        return ModelOutput(main + alpha * probability_to_logit(category_map), extras)

    def loss(self, out: ModelOutput, batch: Batch) -> Tensor:
        """Weighted logistic loss on the fused output, plus per-pixel cross-entropy of the
        category segmentation head where the batch has category labels, plus cross-entropy of
        the text→category classifier where it has target categories."""
        loss = weighted_bce(out.logits, batch.masks, batch.valid)
        labelled_text = batch.target_categories is not None and (batch.target_categories >= 0).any()
        if labelled_text and self.config["category_source"] == "segmentation":  # labels index that space
            loss = loss + self.config["text_category_weight"] * F.cross_entropy(
                out.extras["text_category_logits"], batch.target_categories, ignore_index=-1
            )
        if batch.categories is not None and "category_logits" in out.extras:
            loss = loss + self.config["category_weight"] * category_cross_entropy(
                out.extras["category_logits"], batch.categories
            )
        return loss
