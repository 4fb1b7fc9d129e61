"""Convolutional recurrent cells: the multimodal ConvLSTM of RMI and the ConvGRU of STEP.

Both cells share weights across space (they are convolutions) and time, keep their state as
feature maps [B, C, H, W], and accept an optional per-sample ``update`` mask [B] so a batch of
sentences of different lengths can be run for a fixed number of steps: where ``update`` is 0
the state is carried over unchanged (padding words do not move the state). The mask is applied
arithmetically, so the cells trace to ONNX without data-dependent control flow.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


def carry_state(update: Tensor | None, new: Tensor, old: Tensor) -> Tensor:
    """``new`` where ``update`` [B] is 1, ``old`` where it is 0 (``update=None`` keeps ``new``)."""
    if update is None:
        return new
    keep = update.to(new.dtype).view(-1, *([1] * (new.dim() - 1)))
    return keep * new + (1.0 - keep) * old


class ConvLSTMCell(nn.Module):
    """Convolutional LSTM cell (Shi et al. 2015), the mLSTM of RMI (Liu et al. 2017 §3.3, eq. 2-4, 7).

    The gates ``i, f, o, g`` are ``W_x * x_t + W_h * h_{t-1} + b`` (kernel 1 gives the paper's
    mLSTM: one LSTM shared by all locations); ``c_t = f*c_{t-1} + i*g``, ``h_t = o*tanh(c_t)``.
    :meth:`step` takes the input term ``W_x * x_t`` precomputed, so a caller whose input is
    partly constant over time (RMI's visual features) projects that part once. The forget-gate
    bias starts at 1 so early training keeps memory.
    """

    def __init__(self, in_channels: int, hidden: int, kernel_size: int = 1) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.in_channels = in_channels
        self.hidden = hidden
        pad = kernel_size // 2
        self.input_gates = nn.Conv2d(in_channels, 4 * hidden, kernel_size, padding=pad)  # W_x, b
        self.hidden_gates = nn.Conv2d(hidden, 4 * hidden, kernel_size, padding=pad, bias=False)  # W_h
        with torch.no_grad():
            self.input_gates.bias.zero_()
            self.input_gates.bias[hidden : 2 * hidden].fill_(1.0)

    def initial_state(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Zero (h, c) shaped like ``x`` [B, *, H, W] with ``hidden`` channels."""
        zeros = x.new_zeros((x.shape[0], self.hidden, x.shape[2], x.shape[3]))
        return zeros, zeros

    def forward(
        self, x: Tensor, state: tuple[Tensor, Tensor], update: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """One step: input [B, in, H, W], state (h, c) → new (h, c); ``update`` [B] masks the step."""
        return self.step(self.input_gates(x), state, update)

    def step(
        self, input_gates: Tensor, state: tuple[Tensor, Tensor], update: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """One step from the input term ``W_x * x_t + b`` [B, 4*hidden, H, W] (order i, f, o, g)."""
        h_prev, c_prev = state
        i, f, o, g = (input_gates + self.hidden_gates(h_prev)).chunk(4, dim=1)
        c = torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return carry_state(update, h, h_prev), carry_state(update, c, c_prev)


class ConvGRUCell(nn.Module):
    """Convolutional GRU cell, the top-down refiner of STEP (Chen et al. 2019 §3.5, eq. 5-8).

    ``f = σ(R^f*h + W^f*x + b^f)`` (reset), ``z = σ(R^z*h + W^z*x + b^z)`` (update),
    ``ĥ = tanh(R^h*(f⊙h) + W^h*x + b^h)``, ``h_t = z⊙h_{t-1} + (1−z)⊙ĥ``. The paper uses 3x3
    kernels and 32 filters.
    """

    def __init__(self, in_channels: int, hidden: int = 32, kernel_size: int = 3) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.in_channels = in_channels
        self.hidden = hidden
        pad = kernel_size // 2
        self.input_to_all = nn.Conv2d(in_channels, 3 * hidden, kernel_size, padding=pad)  # W^f, W^z, W^h, b
        self.hidden_to_gates = nn.Conv2d(hidden, 2 * hidden, kernel_size, padding=pad, bias=False)  # R^f, R^z
        self.hidden_to_candidate = nn.Conv2d(hidden, hidden, kernel_size, padding=pad, bias=False)  # R^h

    def initial_state(self, x: Tensor) -> Tensor:
        """Zero hidden state shaped like ``x`` [B, *, H, W] with ``hidden`` channels."""
        return x.new_zeros((x.shape[0], self.hidden, x.shape[2], x.shape[3]))

    def forward(self, x: Tensor, h_prev: Tensor, update: Tensor | None = None) -> Tensor:
        """One step: input [B, in, H, W], hidden [B, hidden, H, W] → new hidden."""
        x_reset, x_update, x_candidate = self.input_to_all(x).chunk(3, dim=1)
        h_reset, h_update = self.hidden_to_gates(h_prev).chunk(2, dim=1)
        reset = torch.sigmoid(x_reset + h_reset)
        keep = torch.sigmoid(x_update + h_update)
        candidate = torch.tanh(x_candidate + self.hidden_to_candidate(reset * h_prev))
        h = keep * h_prev + (1.0 - keep) * candidate
        return carry_state(update, h, h_prev)
