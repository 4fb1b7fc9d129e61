"""Heads that turn backbone taps into candidate regions: RoIAlign, a class-agnostic mask head and a
dense stuff head (the instance-aware model's image side, :mod:`refseg.models.instance_ref`).

``roi_align`` is RoIAlign (He et al. 2017, Mask R-CNN §3, "aligned" sampling) written with
``grid_sample``: each output bin averages ``sampling × sampling`` bilinear samples.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Side of the mask head's output grid.
MASK_SIZE = 28


def roi_align(features: Tensor, boxes: Tensor, batch_index: Tensor, output_size: int, stride: float,
              sampling: int = 2) -> Tensor:
    """Features [B, C, H, W] at ``stride`` and boxes [K, 4] (x1, y1, x2, y2 in input pixels) of
    images ``batch_index`` [K] → [K, C, output_size, output_size]."""
    k = boxes.shape[0]
    if k == 0:
        return features.new_zeros(0, features.shape[1], output_size, output_size)
    steps = (torch.arange(output_size * sampling, device=boxes.device, dtype=boxes.dtype) + 0.5) / (output_size * sampling)
    x = boxes[:, 0:1] + steps[None] * (boxes[:, 2:3] - boxes[:, 0:1])  # [K, n] input pixels
    y = boxes[:, 1:2] + steps[None] * (boxes[:, 3:4] - boxes[:, 1:2])
    height, width = features.shape[-2:]
    gx = 2.0 * x / (stride * width) - 1.0  # pixel coordinate → grid_sample's [-1, 1] (align_corners=False)
    gy = 2.0 * y / (stride * height) - 1.0
    grid = torch.stack([gx[:, None, :].expand(-1, gy.shape[1], -1), gy[:, :, None].expand(-1, -1, gx.shape[1])], -1)
    sampled = F.grid_sample(features[batch_index], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return F.avg_pool2d(sampled, sampling) if sampling > 1 else sampled


class MaskHead(nn.Module):
    """Box → instance mask logits [K, 1, 28, 28], class-agnostic (Mask R-CNN §3 mask branch, small).

    Each tap (with its ``strides``) is projected to ``width`` channels by a 1 × 1 convolution, RoIAligned
    at 14 × 14, and the concatenation goes through three 3 × 3 convolutions, a 2× transposed
    convolution and a 1 × 1 logit.
    """

    def __init__(self, in_channels: Sequence[int], strides: Sequence[int], width: int = 64) -> None:
        super().__init__()
        self.strides = tuple(strides)
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in in_channels)
        layers: list[nn.Module] = []
        channels = width * len(in_channels)
        for _ in range(3):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
            channels = width
        self.convs = nn.Sequential(*layers)
        self.upsample = nn.ConvTranspose2d(width, width, 2, stride=2)
        self.logits = nn.Conv2d(width, 1, 1)

    def forward(self, taps: Sequence[Tensor], boxes: Tensor, batch_index: Tensor) -> Tensor:
        pooled = [roi_align(lat(t), boxes, batch_index, MASK_SIZE // 2, s)
                  for lat, t, s in zip(self.lateral, taps, self.strides)]
        x = self.convs(torch.cat(pooled, 1))
        return self.logits(F.relu(self.upsample(x)))


class StuffHead(nn.Module):
    """Dense classifier over stuff classes plus one "thing" class, at the finest tap's stride:
    each tap projected to ``width`` channels, upsampled and summed (an FPN-style merge), two 3 × 3
    convolutions, a 1 × 1 classifier."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, width: int = 64) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in in_channels)
        self.refine = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True),
        )
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, taps: Sequence[Tensor]) -> Tensor:
        size = taps[0].shape[-2:]
        merged = sum(F.interpolate(lat(t), size=size, mode="bilinear", align_corners=False) if t.shape[-2:] != size
                     else lat(t) for lat, t in zip(self.lateral, taps))
        return self.classifier(self.refine(merged))
