"""Base classes for models made of an image :class:`Backbone` (and a :class:`TextEncoder`).

They own the options every such model shares (backbone, output stride, freezing, text encoder,
vocabulary, embeddings), record them in ``self.config`` and implement ``tokenize``,
``encode_image``, ``backbone_frozen`` and ``checkpoint_exclude`` once. Subclasses add their own
keyword arguments and pass everything on: ``super().__init__(my_option=my_option, **shared)``.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from refseg.models.backbone import build_backbone
from refseg.models.base import Batch, RefSegModel
from refseg.models.text import DEFAULT_MAX_LEN
from refseg.models.text_encoders import TextFeatures, build_text_encoder


#: :meth:`BackboneModel.image_encoding` of the models that read only the deepest tap.
DEEPEST_TAP = "deepest tap"
#: The options of :class:`BackboneModel` that shape its backbone.
BACKBONE_OPTIONS = ("backbone", "pretrained", "output_stride", "freeze_backbone", "backbone_last",
                    "backbone_trainable_stages")


class BackboneModel(RefSegModel):
    """A model with a backbone from :func:`build_backbone` (options recorded in ``config``)."""

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        pretrained: bool = True,
        output_stride: int = 32,
        freeze_backbone: bool = True,
        backbone_last: str = "head",
        backbone_trainable_stages: int = 0,
        **config: Any,
    ) -> None:
        super().__init__(
            backbone=backbone, pretrained=pretrained, output_stride=output_stride, freeze_backbone=freeze_backbone,
            backbone_last=backbone_last, backbone_trainable_stages=backbone_trainable_stages, **config
        )
        self.backbone = build_backbone(
            backbone,
            pretrained=pretrained,
            output_stride=output_stride,
            freeze=freeze_backbone,
            last=backbone_last,
            trainable_stages=backbone_trainable_stages,
        )

    def encode_image(self, images: Tensor) -> list[Tensor]:
        return self.backbone(images)

    @property
    def backbone_frozen(self) -> bool:
        return self.backbone.fully_frozen

    def checkpoint_exclude(self) -> list[str]:
        return ["backbone."] if self.backbone.fully_frozen and self.config["pretrained"] else []

    def image_encoding(self) -> str:
        """What ``encode_image`` returns, in words. Models with the same frozen pretrained backbone
        and the same encoding share cached features; a model that overrides ``encode_image``
        overrides this too (else its features are its own)."""
        return "backbone taps"

    def feature_signature(self) -> str:
        """The image encoding and the backbone options, when the backbone is frozen and pretrained
        (it is then rebuilt alike from the options)."""
        cls = type(self)
        declared = cls.encode_image is BackboneModel.encode_image or cls.image_encoding is not BackboneModel.image_encoding
        if not (declared and self.backbone.fully_frozen and self.config["pretrained"]):
            return super().feature_signature()
        options = {key: self.config[key] for key in BACKBONE_OPTIONS}
        return f"{self.image_encoding()} {json.dumps(options, sort_keys=True)}"

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``"head"`` and the fine-tuned part of the backbone, ``"backbone"``."""
        in_backbone = {id(p) for p in self.backbone.parameters()}
        trainable = [p for p in self.parameters() if p.requires_grad]
        return {"head": [p for p in trainable if id(p) not in in_backbone],
                "backbone": [p for p in trainable if id(p) in in_backbone]}

    def image_features(self, batch: Batch) -> list[Tensor]:
        """Cached backbone taps when the batch has them, else the backbone run on the images."""
        if batch.features is not None:
            return batch.features
        if batch.images is None:
            raise ValueError("batch has neither images nor cached features")
        return self.encode_image(batch.images)

    @staticmethod
    def canvas_size(batch: Batch, feature: Tensor, stride: int) -> int:
        """Side S of the letterboxed canvas (from images or masks; else feature size x stride)."""
        for canvas in (batch.images, batch.masks):
            if canvas is not None:
                return int(canvas.shape[-1])
        return int(feature.shape[-1]) * stride


class ImageTextModel(BackboneModel):
    """Backbone + text encoder; see :class:`Backbone` and :func:`build_text_encoder` for the options."""

    def __init__(
        self,
        text: str = "lstm",
        vocab: Sequence[str] | None = None,
        embedding: str = "learned",
        freeze_embedding: bool = False,
        embed_dim: int = 50,
        hidden: int = 256,
        max_len: int = DEFAULT_MAX_LEN,
        **config: Any,
    ) -> None:
        super().__init__(
            text=text,
            vocab=list(vocab) if vocab is not None else None,
            embedding=embedding,
            freeze_embedding=freeze_embedding,
            embed_dim=embed_dim,
            hidden=hidden,
            max_len=max_len,
            **config,
        )
        self.text = build_text_encoder(
            text,
            vocab=vocab,
            embedding=embedding,
            freeze_embedding=freeze_embedding,
            embed_dim=embed_dim,
            hidden=hidden,
            max_len=max_len,
        )

    def tokenize(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        return self.text.tokenize(texts)

    def checkpoint_exclude(self) -> list[str]:
        return super().checkpoint_exclude() + [f"text.{p}" for p in self.text.checkpoint_exclude()]

    def encode_text(self, batch: Batch) -> TextFeatures:
        return self.text(batch.tokens, batch.lengths)
