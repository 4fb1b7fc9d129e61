"""ConvLSTM / ConvGRU cells: agree with torch's LSTMCell / GRUCell per pixel, honour the update mask."""
from __future__ import annotations

import torch
from torch import nn

from refseg.models.recurrent import ConvGRUCell, ConvLSTMCell


def _pixels(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] → [B*H*W, C]."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def test_conv_lstm_1x1_is_an_lstm_at_every_pixel() -> None:
    torch.manual_seed(0)
    cell = ConvLSTMCell(5, 7, kernel_size=1)
    reference = nn.LSTMCell(5, 7)
    # Our gate order is (i, f, o, g); torch's is (i, f, g, o).
    def reorder(t: torch.Tensor) -> torch.Tensor:
        i, f, o, g = t.detach().chunk(4)
        return torch.cat([i, f, g, o])

    with torch.no_grad():
        reference.weight_ih.copy_(reorder(cell.input_gates.weight[:, :, 0, 0]))
        reference.weight_hh.copy_(reorder(cell.hidden_gates.weight[:, :, 0, 0]))
        reference.bias_ih.copy_(reorder(cell.input_gates.bias))
        reference.bias_hh.zero_()
    x = torch.randn(2, 5, 3, 4)
    h0, c0 = torch.randn(2, 7, 3, 4), torch.randn(2, 7, 3, 4)
    h, c = cell(x, (h0, c0))
    h_ref, c_ref = reference(_pixels(x), (_pixels(h0), _pixels(c0)))
    torch.testing.assert_close(_pixels(h), h_ref)
    torch.testing.assert_close(_pixels(c), c_ref)


def test_conv_gru_1x1_single_channel_is_a_gru_at_every_pixel() -> None:
    # With one hidden channel R^h(f*h) == f*(R^h h), so the paper's eq. 7 matches torch's GRUCell.
    torch.manual_seed(0)
    cell = ConvGRUCell(3, 1, kernel_size=1)
    reference = nn.GRUCell(3, 1)
    wx = cell.input_to_all.weight.detach()[:, :, 0, 0]  # rows: reset, update, candidate
    bx = cell.input_to_all.bias.detach()
    wh = torch.cat([cell.hidden_to_gates.weight, cell.hidden_to_candidate.weight]).detach()[:, :, 0, 0]
    with torch.no_grad():
        reference.weight_ih.copy_(wx)
        reference.bias_ih.copy_(bx)
        reference.weight_hh.copy_(wh)
        reference.bias_hh.zero_()
    x, h0 = torch.randn(2, 3, 5, 3), torch.randn(2, 1, 5, 3)
    torch.testing.assert_close(_pixels(cell(x, h0)), reference(_pixels(x), _pixels(h0)))


def test_update_mask_freezes_the_state_of_masked_samples() -> None:
    torch.manual_seed(0)
    lstm, gru = ConvLSTMCell(4, 6), ConvGRUCell(4, 6)
    x = torch.randn(3, 4, 5, 5)
    h0, c0 = torch.randn(3, 6, 5, 5), torch.randn(3, 6, 5, 5)
    update = torch.tensor([1, 0, 1])
    h, c = lstm(x, (h0, c0), update)
    g = gru(x, h0, update)
    for new, old in ((h, h0), (c, c0), (g, h0)):
        torch.testing.assert_close(new[1], old[1])
        assert not torch.allclose(new[0], old[0]) and not torch.allclose(new[2], old[2])
    h_all, _ = lstm(x, (h0, c0))
    torch.testing.assert_close(h[0], h_all[0])


def test_conv_gru_3x3_sees_only_its_neighbourhood_and_keeps_odd_sizes() -> None:
    torch.manual_seed(0)
    cell = ConvGRUCell(1, 32, kernel_size=3)
    x = torch.zeros(1, 1, 9, 7)
    h0 = cell.initial_state(x)
    assert h0.shape == (1, 32, 9, 7)
    base = cell(x, h0)
    x[0, 0, 4, 3] = 5.0
    changed = (cell(x, h0) - base).abs().sum(dim=1)[0] > 0
    expected = torch.zeros(9, 7, dtype=torch.bool)
    expected[3:6, 2:5] = True
    assert torch.equal(changed, expected)


def test_gradients_flow_through_time() -> None:
    torch.manual_seed(0)
    cell = ConvLSTMCell(2, 3)
    x = torch.randn(1, 2, 4, 4, requires_grad=True)
    state = cell.initial_state(x)
    for _ in range(4):
        state = cell(x, state)
    state[0].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
