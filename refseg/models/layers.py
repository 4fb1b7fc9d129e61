"""Small building blocks shared by the models.

* :func:`l2_normalize` — per-location L2 normalisation of feature maps (paper 1 §3.1).
* :func:`coord_channels` — spatial coordinates of every feature-map cell: ``"2d"`` gives x, y
  in [-1, 1] with the top-left cell at (-1, -1) and the bottom-right one at (+1, +1) (paper 1
  §3.1); ``"8d"`` gives the cell box [x_min, y_min, x_max, y_max, x_center, y_center, 1/w, 1/h]
  with positions in [-1, 1] (paper 3 §3.2, the channels of paper 1's released code). They
  describe the whole canvas: the model never knows where the letterbox padding starts.
* :func:`bilinear_deconv` — a 2s x 2s transposed convolution with stride s initialised to
  bilinear interpolation (paper 1 §3.3, FCN-32s style upsampling), run by :class:`StrideDeconv`.
* :func:`conv1x1_over_concat` — a 1x1 convolution over a channel concatenation of feature
  maps and tiled vectors, computed part by part without building the concatenation.
* :func:`tile` and :func:`conv_block`.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

COORD_KINDS = {"2d": 2, "8d": 8}


def l2_normalize(features: Tensor, dim: int = 1, eps: float = 1e-12) -> Tensor:
    """Unit L2 norm along ``dim`` (channels of a [B, C, h, w] map by default)."""
    return F.normalize(features, p=2.0, dim=dim, eps=eps)


def coord_channels(h: int, w: int, kind: str = "2d", device=None, dtype=torch.float32) -> Tensor:
    """Coordinate maps [1, C, h, w] (C = 2 or 8, see the module docstring)."""
    if kind not in COORD_KINDS:
        raise ValueError(f"coordinate kind must be one of {sorted(COORD_KINDS)}, got {kind!r}")
    if kind == "2d":
        def axis(n: int) -> Tensor:  # a single cell sits at the centre
            if n == 1:
                return torch.zeros(1, device=device, dtype=dtype)
            return torch.linspace(-1.0, 1.0, n, device=device, dtype=dtype)

        y, x = torch.meshgrid(axis(h), axis(w), indexing="ij")
        return torch.stack([x, y]).unsqueeze(0)
    cols = torch.arange(w, device=device, dtype=dtype)
    rows = torch.arange(h, device=device, dtype=dtype)
    x_min, x_max = cols / w * 2 - 1, (cols + 1) / w * 2 - 1
    y_min, y_max = rows / h * 2 - 1, (rows + 1) / h * 2 - 1
    per_x = torch.stack([x_min, x_max, (x_min + x_max) / 2])[:, None, :].expand(3, h, w)
    per_y = torch.stack([y_min, y_max, (y_min + y_max) / 2])[:, :, None].expand(3, h, w)
    ones = torch.ones(h, w, device=device, dtype=dtype)
    channels = [per_x[0], per_y[0], per_x[1], per_y[1], per_x[2], per_y[2], ones / w, ones / h]
    return torch.stack(channels).unsqueeze(0)


def add_coords(features: Tensor, kind: str = "2d") -> Tensor:
    """Concatenate coordinate channels to a [B, C, h, w] map → [B, C + 2|8, h, w]."""
    b, _, h, w = features.shape
    coords = coord_channels(h, w, kind, device=features.device, dtype=features.dtype)
    return torch.cat([features, coords.expand(b, -1, -1, -1)], dim=1)


def tile(vector: Tensor, h: int, w: int) -> Tensor:
    """[B, D] → [B, D, h, w] (the same vector at every location)."""
    return vector[:, :, None, None].expand(-1, -1, h, w)


def conv1x1_over_concat(conv: nn.Conv2d, parts: Sequence[Tensor]) -> Tensor:
    """``conv`` (1x1) applied to the channel concatenation of ``parts``, without building it.

    A 1x1 convolution is linear in its input channels: over [x_1; ...; x_k] it equals
    b + sum_k W_k x_k, with W_k the weight columns of part k. A part is a feature map
    [B or 1, C_k, h, w] or a vector [B, C_k] that stands for its tiling over the map, so a
    vector costs O(B C_k) instead of O(B C_k h w) and a map with batch 1 (e.g. coordinates) is
    convolved once for the whole batch. The result [B, out, h, w] equals
    ``conv(torch.cat(tiled parts, dim=1))`` up to float rounding, with the same parameters.
    """
    widths = [int(part.shape[1]) for part in parts]
    if conv.kernel_size != (1, 1) or conv.stride != (1, 1) or conv.groups != 1 or sum(widths) != conv.in_channels:
        raise ValueError(f"need an ungrouped 1x1 convolution over {sum(widths)} channels, got {conv}")
    out: Tensor | None = None
    for part, weight in zip(parts, conv.weight.flatten(1).split(widths, dim=1)):
        bias = conv.bias if out is None else None  # added once, by the first part
        if part.dim() == 2:
            term = F.linear(part, weight, bias)[:, :, None, None]
        else:
            term = F.conv2d(part, weight[:, :, None, None], bias)
        out = term if out is None else out + term
    return out


def bilinear_kernel(size: int) -> Tensor:
    """[size, size] bilinear interpolation weights (FCN's ``upsample_filt``)."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = torch.arange(size, dtype=torch.float32)
    filt = 1 - (og - center).abs() / factor
    return filt[:, None] * filt[None, :]


class StrideDeconv(nn.ConvTranspose2d):
    """A per-channel transposed convolution with kernel 2s x 2s, stride s and padding s/2,
    computed without the general transposed-convolution kernel.

    With a kernel of exactly twice the stride, every s x s output block receives exactly four
    input cells, one per kernel quarter. So the output is four shifted outer products of the
    input with the kernel's quarters, a few vectorised multiply-adds instead of a generic
    convolution, about four times faster on CPU for the 1-channel maps of the models here.
    Parameters, state-dict keys and results are those of ``nn.ConvTranspose2d``.
    """

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__(
            channels, channels, kernel_size=2 * stride, stride=stride, padding=stride // 2, groups=channels, bias=True
        )

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        s = self.stride[0]
        b, c, h, w = x.shape
        padded = F.pad(x, (1, 1, 1, 1))
        out: Tensor | None = None
        for row in (0, 1):  # kernel quarter (row, col) reaches the block of the cell before it
            for col in (0, 1):
                cells = padded[:, :, 1 - row : 2 - row + h, 1 - col : 2 - col + w]  # [B, C, h+1, w+1]
                quarter = self.weight[:, 0, row * s : (row + 1) * s, col * s : (col + 1) * s]  # [C, s, s]
                term = cells[:, :, :, None, :, None] * quarter[None, :, None, :, None, :]
                out = term if out is None else out + term
        full = out.reshape(b, c, (h + 1) * s, (w + 1) * s)
        crop = s // 2
        out = full[..., crop : crop + h * s, crop : crop + w * s]
        return out if self.bias is None else out + self.bias.view(1, c, 1, 1)


def bilinear_deconv(channels: int, stride: int, learnable: bool = True) -> StrideDeconv:
    """Transposed conv, kernel 2s x 2s, stride s, initialised to per-channel bilinear upsampling.

    An [h, w] input gives exactly [h*s, w*s] (padding s/2), aligned with the canvas grid.
    """
    if stride < 2 or stride % 2:
        raise ValueError(f"deconvolution stride must be even and >= 2, got {stride}")
    deconv = StrideDeconv(channels, stride)
    with torch.no_grad():
        deconv.weight.copy_(bilinear_kernel(2 * stride).expand(channels, 1, -1, -1))
        deconv.bias.zero_()
    deconv.requires_grad_(learnable)
    return deconv


def conv_block(in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1) -> nn.Sequential:
    """Conv (same padding) + ReLU."""
    padding = dilation * (kernel_size - 1) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation),
        nn.ReLU(inplace=True),
    )


def probability_to_logit(p: Tensor, eps: float = 1e-6) -> Tensor:
    """log(p / (1 − p)), with p clamped to [eps, 1 − eps] so that 0 and 1 stay finite."""
    p = p.clamp(eps, 1 - eps)
    return torch.log(p) - torch.log1p(-p)
